"""Rewards of RL4LMs' synthetic tasks: ``increasing_numbers`` and ``sentences_with_dates``."""
from __future__ import annotations

from typing import Any, Dict, List, Optional

from rl4lms.rewards.base import BatchedRewardFunction
from rl4lms.scoring.synthetic import contains_iso_date, increasing_numbers_score


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
