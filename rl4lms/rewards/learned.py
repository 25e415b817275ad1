"""Rewards from learned models: a sequence classifier's label probability, and DailyDialog intent match."""
from __future__ import annotations

from typing import Any, Dict, List, Optional

from rl4lms.metrics.intent import DEFAULT_INTENT_CLASSIFIER, IntentScorer
from rl4lms.metrics.lexical import MeteorMetric
from rl4lms.metrics.semantic import classifier_inputs
from rl4lms.models.classifier import TextClassifier
from rl4lms.rewards.base import ScoreReward


class LearnedReward(ScoreReward):
    """Probability of label ``label_ix`` under any sequence-classification model, scored in batches
    (e.g. a sentiment classifier); a one-output model (a pairwise reward model) gives its raw score."""

    def __init__(self, model_name: str, label_ix: int = 1, include_prompt_for_eval: bool = True,
                 batch_size: int = 32, device: Optional[str] = None) -> None:
        super().__init__()
        self.classifier = TextClassifier(model_name, batch_size, device)
        self.classifier.check_label(label_ix)
        self.label_ix = label_ix
        self.include_prompt = include_prompt_for_eval

    def scores(self, prompt_texts: List[str], gen_texts: List[str], ref_texts: List[List[str]],
               meta_infos: Optional[List[Dict[str, Any]]]) -> List[float]:
        texts = classifier_inputs(prompt_texts, gen_texts, self.include_prompt)
        return self.classifier.label_scores(texts, self.label_ix)


class IntentAccuracyReward(ScoreReward):
    """``intent_coeff`` x (intent classifier agrees with the target act) + ``auto_coeff`` x METEOR when ``shape``."""

    def __init__(self, shape: bool = True, intent_coeff: float = 1.0, auto_coeff: float = 1.0,
                 model_name: str = DEFAULT_INTENT_CLASSIFIER, batch_size: int = 32,
                 device: Optional[str] = None) -> None:
        super().__init__()
        self.intent = IntentScorer(model_name, batch_size, device)
        self.meteor = MeteorMetric() if shape else None
        self.intent_coeff = intent_coeff
        self.auto_coeff = auto_coeff

    @staticmethod
    def requirement_errors(shape: bool = True, **_: Any) -> List[str]:
        """WordNet when ``shape`` adds METEOR."""
        return MeteorMetric.requirement_errors() if shape else []

    def scores(self, prompt_texts: List[str], gen_texts: List[str], ref_texts: List[List[str]],
               meta_infos: Optional[List[Dict[str, Any]]]) -> List[float]:
        rewards = [self.intent_coeff * s for s in self.intent.scores(prompt_texts, gen_texts, meta_infos)]
        if self.meteor is not None:
            meteor = self.meteor.sentence_scores(prompt_texts, gen_texts, ref_texts)
            rewards = [r + self.auto_coeff * m for r, m in zip(rewards, meteor)]
        return rewards
