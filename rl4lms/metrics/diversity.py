"""Diversity of a split's generations (RL4LMs' ``diversity`` metric: GEM-metrics' ``NGramStats`` and ``MSTTR``).

Texts are word-tokenized (:func:`rl4lms.scoring.tokenize.word_tokenize`) and lower-cased. For n = 1..3:
``vocab_size-n`` (distinct n-grams), ``unique-n`` (n-grams seen once), ``distinct-n`` (distinct /
total), ``entropy-n`` (bits), and for n > 1 ``cond_entropy-n``, GEM's next-word entropy
``-sum p(x, y) log2(p(x, y) / p(x))``, where p(x) is the frequency of the (n-1)-gram x among all
(n-1)-grams, not only those followed by a word. Also the mean segmental type-token ratio over
windows of ``window_size`` tokens and generation-length statistics (``total_length``, mean, std,
median, min, max). Every statistic is also computed without punctuation tokens (GEM drops the
tokens that are one ``string.punctuation`` character), under the same name + ``-nopunct``
(``msttr-100_nopunct`` for MSTTR, as GEM names it). All values are corpus-level.
"""
from __future__ import annotations

import math
import string
from collections import Counter
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from rl4lms.metrics.base import BaseMetric, MetricResult
from rl4lms.scoring.tokenize import word_tokenize

PUNCTUATION = frozenset(string.punctuation)


def _entropy(counts: Counter) -> float:
    total = sum(counts.values())
    return -sum(c / total * math.log2(c / total) for c in counts.values()) if total else 0.0


def _cond_entropy(joint: Counter, context: Counter) -> float:
    """GEM's conditional entropy of n-grams ``joint`` given the (n-1)-gram counts ``context``."""
    total_joint, total_context = sum(joint.values()), sum(context.values())
    return -sum(c / total_joint * math.log2(c / total_joint * total_context / context[ngram[:-1]])
                for ngram, c in joint.items())


def _ngrams(tokens: Sequence[str], n: int) -> List[tuple]:
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def msttr(tokens: Sequence[str], window_size: int) -> float:
    """Mean type-token ratio over consecutive full windows (the whole text if shorter than one)."""
    windows = [tokens[i:i + window_size] for i in range(0, len(tokens) - window_size + 1, window_size)]
    windows = windows or ([tokens] if tokens else [])
    return float(np.mean([len(set(w)) / len(w) for w in windows])) if windows else 0.0


def _ngram_statistics(tokenized: Sequence[Sequence[str]], max_n: int, suffix: str) -> Dict[str, float]:
    """GEM's ``NGramStats`` of the tokenized texts, each name followed by ``suffix``."""
    lengths = [len(t) for t in tokenized] or [0]
    stats: Dict[str, float] = {
        f"total_length{suffix}": float(sum(lengths)),
        f"mean_pred_length{suffix}": float(np.mean(lengths)), f"std_pred_length{suffix}": float(np.std(lengths)),
        f"median_pred_length{suffix}": float(np.median(lengths)),
        f"min_pred_length{suffix}": float(min(lengths)), f"max_pred_length{suffix}": float(max(lengths)),
    }
    previous: Counter = Counter()
    for n in range(1, max_n + 1):
        counts = Counter(g for toks in tokenized for g in _ngrams(toks, n))
        total = sum(counts.values())
        stats[f"vocab_size-{n}{suffix}"] = float(len(counts))
        stats[f"unique-{n}{suffix}"] = float(sum(1 for c in counts.values() if c == 1))
        stats[f"distinct-{n}{suffix}"] = len(counts) / total if total else 0.0
        stats[f"entropy-{n}{suffix}"] = _entropy(counts)
        if n > 1:
            stats[f"cond_entropy-{n}{suffix}"] = _cond_entropy(counts, previous) if total else 0.0
        previous = counts
    return stats


def diversity_statistics(texts: Sequence[str], max_n: int = 3, window_size: int = 100) -> Dict[str, float]:
    """The statistics described in the module docstring, keyed by their GEM names."""
    tokenized = [[token.lower() for token in word_tokenize(text)] for text in texts]
    without_punctuation = [[token for token in toks if token not in PUNCTUATION] for toks in tokenized]
    return {f"msttr-{window_size}": msttr([tok for toks in tokenized for tok in toks], window_size),
            f"msttr-{window_size}_nopunct": msttr([tok for toks in without_punctuation for tok in toks], window_size),
            **_ngram_statistics(tokenized, max_n, ""), **_ngram_statistics(without_punctuation, max_n, "-nopunct")}


class DiversityMetrics(BaseMetric):
    """Distinct-n, unique-n, n-gram entropy, MSTTR and length statistics, with and without punctuation
    (``diversity_metrics/...``)."""

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
