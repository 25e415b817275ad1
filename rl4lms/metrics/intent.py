"""DailyDialog intent accuracy: does a classifier read the intended dialogue act off the generated turn?"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

import numpy as np

from rl4lms.scoring.dialog import EOU_TOKEN
from rl4lms.metrics.base import BaseMetric, MetricResult
from rl4lms.models.classifier import TextClassifier

DEFAULT_INTENT_CLASSIFIER = "rajkumarrrk/roberta-daily-dialog-intent-classifier"


def last_utterance(prompt: str) -> str:
    """The final utterance of a ``<EOU>``-joined dialogue context."""
    turns = [turn for turn in prompt.split(EOU_TOKEN) if turn.strip()]
    return turns[-1] if turns else ""


class IntentScorer:
    """1.0 where the classifier's intent for (last utterance + generation) equals ``meta_info["intent"][0]``.

    DailyDialog acts are 1..4 (inform, question, directive, commissive); classifier label ``k`` is act ``k + 1``.
    """

    def __init__(self, model_name: str = DEFAULT_INTENT_CLASSIFIER, batch_size: int = 32,
                 device: Optional[str] = None) -> None:
        self.classifier = TextClassifier(model_name, batch_size, device)

    def scores(self, prompt_texts: List[str], generated_texts: List[str],
               meta_infos: Optional[List[Dict[str, Any]]]) -> List[float]:
        if meta_infos is None or any("intent" not in info for info in meta_infos):
            raise ValueError("intent_accuracy needs meta_data['intent'] on every sample (the daily_dialog pool)")
        texts = [last_utterance(prompt) + gen for prompt, gen in zip(prompt_texts, generated_texts)]
        predicted = self.classifier.probabilities(texts).argmax(dim=-1).tolist()
        targets = [int(info["intent"][0]) - 1 for info in meta_infos]
        return [float(p == t) for p, t in zip(predicted, targets)]


class IntentAccuracyMetric(BaseMetric):
    """Share of generations whose predicted intent matches the reference turn's (``intent/accuracy``)."""

    def __init__(self, model_name: str = DEFAULT_INTENT_CLASSIFIER, batch_size: int = 32,
                 device: Optional[str] = None) -> None:
        self.scorer = IntentScorer(model_name, batch_size, device)

    def compute(self, prompt_texts: List[str], generated_texts: List[str], reference_texts: List[List[str]],
                meta_infos: Optional[List[Dict[str, Any]]] = None, model: Any = None,
                split_name: Optional[str] = None) -> MetricResult:
        scores = self.scorer.scores(prompt_texts, generated_texts, meta_infos)
        return {"intent/accuracy": (scores, float(np.mean(scores)) if scores else 0.0)}
