"""Scores of RL4LMs' synthetic tasks, shared by their rewards and metrics."""
from __future__ import annotations

import re
from typing import Optional

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
