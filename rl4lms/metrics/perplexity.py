"""Perplexity of the reference texts under the model being trained (RL4LMs' ``causal_perplexity``)."""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional

import torch
from transformers import AutoTokenizer

from rl4lms.metrics.base import BaseMetric, MetricResult
from rl4lms.models.loading import load_pretrained


def context_length(model: Any) -> int:
    """Longest input of a decoder-only model (absolute positions)."""
    config = model.config
    if getattr(config, "is_encoder_decoder", False):
        raise ValueError("causal_perplexity needs a decoder-only (causal) model; this policy's model is "
                         f"an encoder-decoder ({type(model).__name__})")
    for key in ("n_positions", "max_position_embeddings", "n_ctx"):
        if getattr(config, key, None):
            return int(getattr(config, key))
    raise ValueError(f"cannot tell the context length of {type(model).__name__} for causal_perplexity")


@torch.no_grad()
def strided_perplexity(model: Any, input_ids: torch.Tensor, stride: int, max_length: int) -> float:
    """Sliding-window perplexity of one long token stream ``[1, T]``: every token is scored once,
    with up to ``max_length - stride`` tokens of earlier context (Hugging Face's recipe)."""
    device = next(model.parameters()).device
    total_nll, total_tokens, seq_len, previous_end = 0.0, 0, input_ids.size(1), 0
    for begin in range(0, seq_len, stride):
        end = min(begin + max_length, seq_len)
        target_len = end - previous_end
        window = input_ids[:, begin:end].to(device)
        labels = window.clone()
        labels[:, :-target_len] = -100
        if labels[:, 1:].ne(-100).any():  # the first token of a stream has nothing to be predicted from
            loss = model(input_ids=window, labels=labels).loss
            scored = int(labels[:, 1:].ne(-100).sum())
            total_nll += float(loss) * scored
            total_tokens += scored
        previous_end = end
        if end == seq_len:
            break
    return math.exp(total_nll / total_tokens) if total_tokens else float("nan")


class CausalPerplexity(BaseMetric):
    """Perplexity of the references joined by blank lines (``fluency_metrics/perplexity``); skipped on train.

    ``use_text_from_meta_data`` reads each sample's ``meta_data["reference"]`` instead (e.g. full IMDB reviews).
    """

    def __init__(self, tokenizer_id: str, stride: int = 512, model_type: str = "causal",
                 use_text_from_meta_data: bool = False) -> None:
        if model_type != "causal":
            raise ValueError(f"model_type {model_type!r} is not supported; valid: 'causal'")
        if stride < 1:
            raise ValueError(f"stride must be at least 1, got {stride}")
        self.tokenizer = load_pretrained(AutoTokenizer, tokenizer_id, "tokenizer")
        self.stride = stride
        self.use_text_from_meta_data = use_text_from_meta_data

    def compute(self, prompt_texts: List[str], generated_texts: List[str], reference_texts: List[List[str]],
                meta_infos: Optional[List[Dict[str, Any]]] = None, model: Any = None,
                split_name: Optional[str] = None) -> MetricResult:
        if split_name == "train":
            return {}
        if model is None:
            raise ValueError("causal_perplexity needs the policy's model")
        if self.use_text_from_meta_data:
            texts = [info["reference"] for info in meta_infos or []]
        else:
            texts = [ref for refs in reference_texts for ref in refs]
        input_ids = self.tokenizer("\n\n".join(texts), return_tensors="pt").input_ids
        max_length = context_length(model)
        was_training = model.training
        model.eval()
        try:
            value = strided_perplexity(model, input_ids, min(self.stride, max_length), max_length)
        finally:
            model.train(was_training)
        return {"fluency_metrics/perplexity": (None, value)}
