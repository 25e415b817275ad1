"""Metric interface: RL4LMs' ``compute`` signature returning sentence- and corpus-level scores."""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Dict, List, Optional, Tuple

MetricResult = Dict[str, Tuple[Optional[List[float]], float]]
"""Maps a metric name such as ``"synthetic/dates_in_text"`` to (per-sample scores or None, corpus score)."""


class MetricOutputError(ValueError):
    """A metric returned per-sample scores that do not line up with the samples."""


class BaseMetric(ABC):
    """A metric computed over a split's generations."""

    @abstractmethod
    def compute(self, prompt_texts: List[str], generated_texts: List[str], reference_texts: List[List[str]],
                meta_infos: Optional[List[Dict[str, Any]]] = None, model: Any = None,
                split_name: Optional[str] = None) -> MetricResult:
        ...
