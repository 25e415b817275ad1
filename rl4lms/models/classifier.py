"""A sequence-classification model with its tokenizer that scores texts in batches.

Shared by the ``learned_reward`` reward and metric and by ``intent_accuracy``; any
``AutoModelForSequenceClassification`` checkpoint (hub id, local folder or embedded tiny model).
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedTokenizerBase

from rl4lms.models.loading import default_device, load_pretrained


def load_classifier_tokenizer(model_name: str) -> PreTrainedTokenizerBase:
    """The tokenizer of a classifier or reward model, set up as they read text: padded on the right
    (position ids need no adjusting) and truncated from the left (the end, the generation, is kept)."""
    tokenizer = load_pretrained(AutoTokenizer, model_name, "classifier tokenizer")
    tokenizer.padding_side, tokenizer.truncation_side = "right", "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


class TextClassifier:
    """Label probabilities for texts, ``batch_size`` texts per forward, truncated from the left."""

    def __init__(self, model_name: str, batch_size: int = 32, device: Optional[str] = None,
                 max_length: Optional[int] = None) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.model_name = model_name
        self.batch_size = batch_size
        self.device = device or default_device()
        self.tokenizer = load_classifier_tokenizer(model_name)
        self.model = load_pretrained(AutoModelForSequenceClassification, model_name, "classifier model")
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.model.to(self.device).eval()
        self.max_length = max_length or min(self.tokenizer.model_max_length, 4096)

    @property
    def num_labels(self) -> int:
        return int(self.model.config.num_labels)

    def check_label(self, label_ix: int, key: str = "label_ix") -> None:
        if not 0 <= label_ix < self.num_labels:
            raise ValueError(f"{key} {label_ix} is out of range: classifier '{self.model_name}' has "
                             f"{self.num_labels} labels (0..{self.num_labels - 1})")

    @torch.no_grad()
    def logits(self, texts: Sequence[str]) -> torch.Tensor:
        """``[len(texts), num_labels]`` raw logits (on CPU, float32)."""
        chunks: List[torch.Tensor] = []
        for start in range(0, len(texts), self.batch_size):
            encoded = self.tokenizer(list(texts[start:start + self.batch_size]), return_tensors="pt",
                                     padding=True, truncation=True, max_length=self.max_length).to(self.device)
            logits = self.model(input_ids=encoded.input_ids, attention_mask=encoded.attention_mask).logits
            chunks.append(logits.float().cpu())
        return torch.cat(chunks) if chunks else torch.zeros(0, self.num_labels)

    def probabilities(self, texts: Sequence[str]) -> torch.Tensor:
        """``[len(texts), num_labels]`` softmax probabilities."""
        return torch.softmax(self.logits(texts), dim=-1)

    def label_scores(self, texts: Sequence[str], label_ix: int) -> List[float]:
        """Probability of ``label_ix``; for a one-output model (a pairwise reward model) the raw score."""
        if self.num_labels == 1:
            return self.logits(texts)[:, 0].tolist()
        return self.probabilities(texts)[:, label_ix].tolist()
