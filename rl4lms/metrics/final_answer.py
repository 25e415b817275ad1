"""``exact_match_answer``: the share of generations whose final answer is right (reading answers:
:mod:`rl4lms.scoring.answers`)."""
from __future__ import annotations

from typing import Any, Dict, List, Optional

import numpy as np

from rl4lms.metrics.base import MetricResult, SentenceMetric
from rl4lms.scoring.answers import AnswerChecker, Extraction


class ExactMatchAnswerMetric(SentenceMetric):
    """Share of generations whose final answer equals the sample's (``answer/exact_match``), and share
    of generations in which an answer was found at all (``answer/found``, i.e. the format was followed).

    Args (``train_evaluation.metrics[].args``):
        extraction: how the answer is read from a generation: ``whole``, ``marker``, ``first_number``
            or ``last_number``, or a list of them tried in order (e.g. ``[marker, last_number]``).
        answer_key: the ``meta_data`` key of the expected answer (the ``synthetic_arithmetic`` and
            ``gsm8k`` pools set ``answer``); a sample without it is checked against its references,
            read with the same extraction.
    """

    name = "answer/exact_match"

    def __init__(self, extraction: Extraction = "whole", answer_key: str = "answer") -> None:
        self.checker = AnswerChecker(extraction, answer_key)

    def sentence_scores(self, prompt_texts: List[str], generated_texts: List[str],
                        reference_texts: List[List[str]], meta_infos: Optional[List[Dict[str, Any]]] = None
                        ) -> List[float]:
        return self.checker.correct(self.checker.answers(generated_texts), reference_texts, meta_infos)

    def compute(self, prompt_texts: List[str], generated_texts: List[str], reference_texts: List[List[str]],
                meta_infos: Optional[List[Dict[str, Any]]] = None, model: Any = None,
                split_name: Optional[str] = None) -> MetricResult:
        found = [float(answer is not None) for answer in self.checker.answers(generated_texts)]
        return {**super().compute(prompt_texts, generated_texts, reference_texts, meta_infos, model, split_name),
                "answer/found": (found, float(np.mean(found)) if found else 0.0)}
