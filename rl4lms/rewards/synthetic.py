"""Rewards of RL4LMs' synthetic tasks: ``increasing_numbers`` and ``sentences_with_dates``."""
from __future__ import annotations

import re
from typing import Any, Dict, List, Optional

from rl4lms.rewards.base import BatchedRewardFunction

_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def _as_number(token: str) -> Optional[float]:
    try:
        return float(token)
    except ValueError:
        return None


def increasing_numbers_score(text: str, min_tokens: int) -> float:
    """Length of the increasing run that starts at the first number, over the text length.

    The denominator is ``max(#whitespace tokens, min_tokens / 2)`` so that very short
    texts cannot score high (RL4LMs' definition).
    """
    tokens = text.split()
    numbers = [n for n in (_as_number(t) for t in tokens) if n is not None]
    if not numbers:
        return 0.0
    run = 1
    for previous, current in zip(numbers, numbers[1:]):
        if not current > previous:  # also ends the run at NaN, which compares False
            break
        run += 1
    return run / max(len(tokens), min_tokens / 2)


def contains_iso_date(text: str) -> float:
    """1.0 when the text holds a ``YYYY-MM-DD`` date, else 0.0."""
    return 1.0 if _ISO_DATE.search(text) else 0.0


class IncreasingNumbersReward(BatchedRewardFunction):
    """Rewards generations that list numbers in increasing order."""

    def __init__(self, min_tokens: int = 20) -> None:
        if min_tokens < 1:
            raise ValueError(f"reward_fn.args.min_tokens must be at least 1, got {min_tokens}")
        self.min_tokens = min_tokens

    def __call__(self, prompt_texts: List[str], gen_texts: List[str], ref_texts: List[List[str]],
                 dones: List[bool], meta_infos: Optional[List[Dict[str, Any]]] = None) -> List[float]:
        return [increasing_numbers_score(text, self.min_tokens) if done else 0.0
                for text, done in zip(gen_texts, dones)]


class SentencesWithDatesReward(BatchedRewardFunction):
    """Rewards generations that contain an ISO date."""

    def __call__(self, prompt_texts: List[str], gen_texts: List[str], ref_texts: List[List[str]],
                 dones: List[bool], meta_infos: Optional[List[Dict[str, Any]]] = None) -> List[float]:
        return [contains_iso_date(text) if done else 0.0 for text, done in zip(gen_texts, dones)]
