"""``trl.core`` of TRL's classic API (0.4-0.11): the helpers its scripts import.

The tensor statistics are the project's own (:mod:`rl4lms.algorithms.advantages`,
:mod:`rl4lms.policies.base`), under TRL's names and argument orders.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

import numpy as np
import torch
from torch import nn
from transformers import set_seed  # noqa: F401  (TRL's trl.core.set_seed)

from rl4lms.algorithms.advantages import masked_mean as _masked_mean
from rl4lms.algorithms.advantages import masked_var as _masked_var
from rl4lms.algorithms.advantages import whiten as _masked_whiten
from rl4lms.policies.base import entropy_from_logits, masked_log_probs

__all__ = ["LengthSampler", "respond_to_batch", "set_seed", "whiten", "masked_whiten", "masked_mean", "masked_var",
           "logprobs_from_logits", "entropy_from_logits", "clip_by_value", "flatten_dict", "stack_dicts",
           "stats_to_np"]


class LengthSampler:
    """Draws a length uniformly from ``[min_value, max_value)`` with numpy's global generator (TRL's
    ``LengthSampler``: ``generate(..., length_sampler=...)`` sets ``max_new_tokens`` with it)."""

    def __init__(self, min_value: int, max_value: int) -> None:
        if max_value <= min_value:
            raise ValueError(f"LengthSampler needs min_value < max_value, got {min_value} and {max_value}")
        self.values = list(range(min_value, max_value))

    def __call__(self) -> int:
        return int(np.random.choice(self.values))


def _filter_top_k_top_p(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        ordered, order = torch.sort(logits, descending=True)
        cumulative = torch.softmax(ordered, dim=-1).cumsum(-1)
        drop = cumulative > top_p
        drop[..., 1:] = drop[..., :-1].clone()  # keep the token that crosses top_p
        drop[..., 0] = False
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


@torch.no_grad()
def respond_to_batch(model: nn.Module, queries: torch.Tensor, txt_len: int = 20, top_k: int = 0,
                     top_p: float = 1.0) -> torch.Tensor:
    """Sample ``txt_len`` tokens after each (unpadded, equal-length) query with a full forward per
    token, as TRL's helper does; returns only the sampled tokens ``[batch, txt_len]``."""
    input_ids = queries
    for _ in range(txt_len):
        output = model(input_ids)
        logits = output[0] if isinstance(output, tuple) else output.logits
        probabilities = torch.softmax(_filter_top_k_top_p(logits[:, -1, :], top_k, top_p), dim=-1)
        input_ids = torch.cat([input_ids, torch.multinomial(probabilities, num_samples=1)], dim=-1)
    return input_ids[:, -txt_len:]


def whiten(values: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """Zero mean (unless ``shift_mean`` is False) and unit variance over all entries."""
    return _masked_whiten(values, torch.ones_like(values), shift_mean)


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """:func:`whiten` over the entries where ``mask`` is 1 (masked-out entries become 0)."""
    return _masked_whiten(values, mask, shift_mean)


def masked_mean(values: torch.Tensor, mask: torch.Tensor, axis: Optional[int] = None) -> torch.Tensor:
    """Mean of the masked entries, over everything or along ``axis``."""
    if axis is None:
        return _masked_mean(values, mask)
    return (values * mask).sum(axis) / mask.sum(axis)


def masked_var(values: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of the masked entries (Bessel-corrected with ``unbiased``)."""
    return _masked_var(values, mask, unbiased)


def logprobs_from_logits(logits: torch.Tensor, labels: torch.Tensor, gather: bool = True) -> torch.Tensor:
    """Log-probabilities of ``labels`` under ``logits`` (all of them without ``gather``)."""
    if not gather:
        return torch.log_softmax(logits.float(), dim=-1)
    return masked_log_probs(logits, labels)


def clip_by_value(x: torch.Tensor, tensor_min: Any, tensor_max: Any) -> torch.Tensor:
    """Element-wise clamp between two tensors (or numbers)."""
    return torch.max(torch.min(x, torch.as_tensor(tensor_max)), torch.as_tensor(tensor_min))


def flatten_dict(nested: Dict[str, Any], sep: str = "/") -> Dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a/b": 1}``."""
    flat: Dict[str, Any] = {}
    for key, value in nested.items():
        if isinstance(value, dict):
            flat.update({f"{key}{sep}{inner}": v for inner, v in flatten_dict(value, sep).items()})
        else:
            flat[key] = value
    return flat


def stack_dicts(stats_dicts: Sequence[Dict[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
    """One dict of stacked (1-D: concatenated, padded with -1 to the longest) tensors per key."""
    stacked = {}
    for key in stats_dicts[0]:
        flat = [torch.flatten(d[key]) for d in stats_dicts]
        stacked[key] = torch.nn.utils.rnn.pad_sequence(flat, batch_first=True, padding_value=-1)
    return stacked


def stats_to_np(stats: Dict[str, Any]) -> Dict[str, Any]:
    """Tensors as numpy arrays (0-d ones as Python floats), for trackers."""
    out: Dict[str, Any] = {}
    for key, value in stats.items():
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu()
            value = value.float().numpy() if value.dtype == torch.bfloat16 else value.numpy()
        if np.isscalar(value) or (isinstance(value, np.ndarray) and value.ndim == 0):
            value = float(value)
        out[key] = value
    return out

