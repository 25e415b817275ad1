"""Samples and the base class of text-generation data pools (RL4LMs' ``TextGenPool``)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Sequence

import numpy as np
from rl4lms.errors import EmptyDataPoolError


@dataclass(frozen=True)
class Sample:
    """One prompt (or source input) with its reference texts and free-form metadata."""

    id: str
    prompt_or_input_text: str
    references: List[str] = field(default_factory=list)
    meta_data: Dict[str, Any] = field(default_factory=dict)


class TextGenPool:
    """An indexable collection of :class:`Sample` for one split.

    Subclasses implement :meth:`prepare` (a classmethod taking ``split`` plus the
    ``datapool.args`` of the config) and return ``cls(samples)``.
    """

    def __init__(self, samples: Sequence[Sample]) -> None:
        self._samples = list(samples)

    @classmethod
    def prepare(cls, split: str, **args: Any) -> "TextGenPool":
        raise NotImplementedError(f"{cls.__name__} must implement prepare(split, **args)")

    def __len__(self) -> int:
        return len(self._samples)

    def __getitem__(self, ix: int) -> Sample:
        return self._samples[ix]

    def __iter__(self) -> Iterator[Sample]:
        return iter(self._samples)

    def sample(self, rng: np.random.Generator) -> Sample:
        """Draw one sample uniformly with the given generator."""
        if not self._samples:
            raise EmptyDataPoolError("cannot sample from an empty data pool")
        return self._samples[int(rng.integers(len(self._samples)))]

    def split(self, ratios: Sequence[float]) -> List["TextGenPool"]:
        """Cut the pool into consecutive parts of the given fractions (which must sum to 1)."""
        if abs(sum(ratios) - 1.0) > 1e-6 or any(r < 0 for r in ratios):
            raise ValueError(f"split ratios must be non-negative and sum to 1, got {list(ratios)}")
        bounds = np.cumsum([0.0, *ratios]) * len(self._samples)
        edges = [int(round(b)) for b in bounds]
        return [type(self)(self._samples[a:b]) for a, b in zip(edges[:-1], edges[1:])]
