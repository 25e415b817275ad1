"""Diversity of a split's generations (RL4LMs' ``diversity`` metric, GEM's n-gram statistics).

Texts are lower-cased and word-tokenized (NLTK). For n = 1..3: ``vocab_size-n`` (distinct n-grams),
``unique-n`` (n-grams seen once), ``distinct-n`` (distinct / total), ``entropy-n`` (bits), and for
n > 1 ``cond_entropy-n`` (entropy of the last word given the n-1 before it). Also the mean
segmental type-token ratio over windows of ``window_size`` tokens and generation-length statistics.
All values are corpus-level.
"""
from __future__ import annotations

import math
from collections import Counter
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from rl4lms.metrics.base import BaseMetric, MetricResult
from rl4lms.registry import MetricRegistry


def _entropy(counts: Counter) -> float:
    total = sum(counts.values())
    return -sum(c / total * math.log2(c / total) for c in counts.values()) if total else 0.0


def _ngrams(tokens: Sequence[str], n: int) -> List[tuple]:
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def msttr(tokens: Sequence[str], window_size: int) -> float:
    """Mean type-token ratio over consecutive full windows (the whole text if shorter than one)."""
    windows = [tokens[i:i + window_size] for i in range(0, len(tokens) - window_size + 1, window_size)]
    windows = windows or ([tokens] if tokens else [])
    return float(np.mean([len(set(w)) / len(w) for w in windows])) if windows else 0.0


def diversity_statistics(texts: Sequence[str], max_n: int = 3, window_size: int = 100) -> Dict[str, float]:
    """The statistics described in the module docstring, keyed by their GEM names."""
    from nltk.tokenize import NLTKWordTokenizer  # imported on use: see rl4lms.metrics.lexical

    tokenizer = NLTKWordTokenizer()
    tokenized = [tokenizer.tokenize(text.lower()) for text in texts]
    lengths = [len(t) for t in tokenized] or [0]
    stats: Dict[str, float] = {
        f"msttr-{window_size}": msttr([tok for toks in tokenized for tok in toks], window_size),
        "mean_pred_length": float(np.mean(lengths)), "std_pred_length": float(np.std(lengths)),
        "min_pred_length": float(min(lengths)), "max_pred_length": float(max(lengths)),
    }
    for n in range(1, max_n + 1):
        counts = Counter(g for toks in tokenized for g in _ngrams(toks, n))
        total = sum(counts.values())
        stats[f"vocab_size-{n}"] = float(len(counts))
        stats[f"unique-{n}"] = float(sum(1 for c in counts.values() if c == 1))
        stats[f"distinct-{n}"] = len(counts) / total if total else 0.0
        stats[f"entropy-{n}"] = _entropy(counts)
        if n > 1:
            prefixes = Counter(g for toks in tokenized for g in _ngrams(toks[:-1], n - 1))
            stats[f"cond_entropy-{n}"] = stats[f"entropy-{n}"] - _entropy(prefixes) if total else 0.0
    return stats


@MetricRegistry.register("diversity")
class DiversityMetrics(BaseMetric):
    """Distinct-n, unique-n, n-gram entropy, MSTTR and length statistics (``diversity_metrics/...``)."""

    def __init__(self, window_size: int = 100, max_n: int = 3) -> None:
        if window_size < 1 or max_n < 1:
            raise ValueError(f"window_size and max_n must be >= 1, got {window_size}, {max_n}")
        self.window_size = window_size
        self.max_n = max_n

    def compute(self, prompt_texts: List[str], generated_texts: List[str], reference_texts: List[List[str]],
                meta_infos: Optional[List[Dict[str, Any]]] = None, model: Any = None,
                split_name: Optional[str] = None) -> MetricResult:
        stats = diversity_statistics(generated_texts, self.max_n, self.window_size)
        return {f"diversity_metrics/{name}": (None, value) for name, value in stats.items()}
