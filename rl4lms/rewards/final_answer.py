"""Verifiable rewards: the generation's final answer against the sample's (arithmetic, GSM8K)."""
from __future__ import annotations

from typing import Any, Dict, List, Optional

from rl4lms.scoring.answers import AnswerChecker, Extraction
from rl4lms.rewards.base import ScoreReward


class ExactMatchAnswerReward(ScoreReward):
    """1 when the final answer read from the generation equals the sample's answer, else
    ``format_reward`` if an answer was found at all, else 0 (the ``exact_match_answer`` metric's checks).

    Args (``reward_fn.args``):
        extraction, answer_key: as for the ``exact_match_answer`` metric
            (:class:`rl4lms.metrics.final_answer.ExactMatchAnswerMetric`).
        format_reward: the reward for a wrong answer that could be read (0: none). A small value
            (e.g. 0.1) first teaches a model from scratch to answer in the expected form, which makes
            right answers frequent enough to learn from.
        shaping_fn, shaping_fn_args: a registered reward added to the score.
    """

    def __init__(self, extraction: Extraction = "whole", answer_key: str = "answer", format_reward: float = 0.0,
                 shaping_fn: Optional[str] = None, shaping_fn_args: Optional[Dict[str, Any]] = None) -> None:
        super().__init__(shaping_fn, shaping_fn_args)
        if not 0.0 <= format_reward < 1.0:
            raise ValueError(f"format_reward must be in [0, 1), below a right answer's 1, got {format_reward}")
        self.checker = AnswerChecker(extraction, answer_key)
        self.format_reward = format_reward

    def scores(self, prompt_texts: List[str], gen_texts: List[str], ref_texts: List[List[str]],
               meta_infos: Optional[List[Dict[str, Any]]]) -> List[float]:
        answers = self.checker.answers(gen_texts)
        return [1.0 if right else (self.format_reward if answer is not None else 0.0)
                for answer, right in zip(answers, self.checker.correct(answers, ref_texts, meta_infos))]
