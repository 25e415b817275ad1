"""Metrics of the synthetic tasks, sharing their scoring with the rewards."""
from __future__ import annotations

from typing import Any, Dict, List, Optional

import numpy as np

from rl4lms.metrics.base import BaseMetric, MetricResult
from rl4lms.scoring.synthetic import contains_iso_date, increasing_numbers_score


class _PerTextMetric(BaseMetric):
    """Scores each generated text on its own and averages the scores."""

    name: str

    def score(self, text: str) -> float:
        raise NotImplementedError

    def compute(self, prompt_texts: List[str], generated_texts: List[str], reference_texts: List[List[str]],
                meta_infos: Optional[List[Dict[str, Any]]] = None, model: Any = None,
                split_name: Optional[str] = None) -> MetricResult:
        scores = [self.score(text) for text in generated_texts]
        return {self.name: (scores, float(np.mean(scores)) if scores else 0.0)}


class IncreasingNumbersInText(_PerTextMetric):
    """Share of each text that is an increasing run of numbers."""

    name = "synthetic/increasing_numbers_in_text"

    def __init__(self, min_tokens: int = 20) -> None:
        self.min_tokens = min_tokens

    def score(self, text: str) -> float:
        return increasing_numbers_score(text, self.min_tokens)


class DateInText(_PerTextMetric):
    """Fraction of texts that contain an ISO date."""

    name = "synthetic/dates_in_text"

    def score(self, text: str) -> float:
        return contains_iso_date(text)
