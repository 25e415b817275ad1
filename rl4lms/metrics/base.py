"""Metric interface: RL4LMs' ``compute`` signature returning sentence- and corpus-level scores."""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

MetricResult = Dict[str, Tuple[Optional[List[float]], float]]
"""Maps a metric name such as ``"synthetic/dates_in_text"`` to (per-sample scores or None, corpus score)."""


class BaseMetric(ABC):
    """A metric computed over a split's generations."""

    @abstractmethod
    def compute(self, prompt_texts: List[str], generated_texts: List[str], reference_texts: List[List[str]],
                meta_infos: Optional[List[Dict[str, Any]]] = None, model: Any = None,
                split_name: Optional[str] = None) -> MetricResult:
        ...


def mean_score(scores: Sequence[float]) -> float:
    """The mean of per-sample scores (0 for none)."""
    return float(np.mean(scores)) if len(scores) else 0.0


class SentenceMetric(BaseMetric):
    """A metric with one main per-sample score (``name``) and a corpus score."""

    name: str

    def sentence_scores(self, prompt_texts: List[str], generated_texts: List[str],
                        reference_texts: List[List[str]], meta_infos: Optional[List[Dict[str, Any]]] = None
                        ) -> List[float]:
        raise NotImplementedError

    def corpus_score(self, generated_texts: List[str], reference_texts: List[List[str]],
                     sentence_scores: List[float]) -> float:
        """Corpus-level score; the mean of the sentence scores unless the metric defines its own."""
        return mean_score(sentence_scores)

    def compute(self, prompt_texts: List[str], generated_texts: List[str], reference_texts: List[List[str]],
                meta_infos: Optional[List[Dict[str, Any]]] = None, model: Any = None,
                split_name: Optional[str] = None) -> MetricResult:
        scores = self.sentence_scores(prompt_texts, generated_texts, reference_texts, meta_infos)
        return {self.name: (scores, self.corpus_score(generated_texts, reference_texts, scores))}
