"""Synthetic data pools that need no download: RL4LMs' ``dummy_pool`` and prompt pools for
the increasing-numbers and dates tasks."""
from __future__ import annotations

import datetime as dt
from typing import List

import numpy as np

from rl4lms.data_pools.text_gen_pool import Sample, TextGenPool

_SPLIT_SEEDS = {"train": 0, "val": 1, "test": 2}


def _check_split(split: str) -> None:
    if split not in _SPLIT_SEEDS:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(_SPLIT_SEEDS)}")


def _split_rng(split: str, seed: int) -> np.random.Generator:
    _check_split(split)
    return np.random.default_rng([seed, _SPLIT_SEEDS[split]])


def _check_count(n_samples: int) -> None:
    if n_samples < 1:
        raise ValueError(f"datapool.args.n_samples must be at least 1, got {n_samples}")


class DummyPool(TextGenPool):
    """The same prompt repeated ``n_samples`` times, with no references (RL4LMs' test pool)."""

    @classmethod
    def prepare(cls, split: str, prompt: str, n_samples: int = 100) -> "DummyPool":
        _check_split(split)
        _check_count(n_samples)
        return cls([Sample(id=f"{split}_{ix}", prompt_or_input_text=prompt) for ix in range(n_samples)])


class IncreasingNumbersPool(TextGenPool):
    """Prompts that start a run of increasing numbers; references continue the run."""

    @classmethod
    def prepare(cls, split: str, n_samples: int = 100, prompt_numbers: int = 1,
                reference_numbers: int = 8, seed: int = 0) -> "IncreasingNumbersPool":
        _check_count(n_samples)
        rng = _split_rng(split, seed)
        samples: List[Sample] = []
        for ix in range(n_samples):
            start = int(rng.integers(0, 50))
            steps = rng.integers(1, 10, size=prompt_numbers + reference_numbers)
            numbers = (start + np.cumsum(steps)).tolist()
            prompt = " ".join(str(n) for n in numbers[:prompt_numbers])
            reference = " ".join(str(n) for n in numbers[prompt_numbers:])
            samples.append(Sample(id=f"{split}_{ix}", prompt_or_input_text=prompt, references=[reference]))
        return cls(samples)


_DATE_PROMPTS = ["The meeting is on", "She was born on", "Deadline:", "We met on", "The store opened on",
                 "Posted", "The flight leaves on", "It happened on"]


class DatesPool(TextGenPool):
    """Sentence openings that invite a date; references give one in ISO ``YYYY-MM-DD`` form."""

    @classmethod
    def prepare(cls, split: str, n_samples: int = 100, seed: int = 0) -> "DatesPool":
        _check_count(n_samples)
        rng = _split_rng(split, seed)
        samples: List[Sample] = []
        for ix in range(n_samples):
            prompt = _DATE_PROMPTS[int(rng.integers(len(_DATE_PROMPTS)))]
            date = dt.date(1990, 1, 1) + dt.timedelta(days=int(rng.integers(0, 15000)))
            samples.append(Sample(id=f"{split}_{ix}", prompt_or_input_text=prompt,
                                  references=[f"{prompt} {date.isoformat()}."]))
        return cls(samples)
