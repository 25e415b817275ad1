"""Episode rewards from a metric's per-sample score of each finished generation (RL4LMs' metric
rewards), over :class:`rl4lms.rewards.base.ScoreReward`."""
from __future__ import annotations

from typing import Any, Dict, List, Optional

from rl4lms.metrics.base import SentenceMetric
from rl4lms.metrics.lexical import (ROUGE_TYPES, BLEUMetric, ChrFMetric, MeteorMetric, RougeLMaxMetric,
                                    SacreBLEUMetric, TERMetric, RougeScorer)
from rl4lms.metrics.semantic import BERTScorer
from rl4lms.rewards.base import ScoreReward


class MetricReward(ScoreReward):
    """Reward = the per-sample score of ``self.metric``."""

    metric: SentenceMetric

    def scores(self, prompt_texts: List[str], gen_texts: List[str], ref_texts: List[List[str]],
               meta_infos: Optional[List[Dict[str, Any]]]) -> List[float]:
        return self.metric.sentence_scores(prompt_texts, gen_texts, ref_texts, meta_infos)


class MeteorReward(MetricReward):
    """METEOR of the generation against its references."""

    def __init__(self, shaping_fn: Optional[str] = None, shaping_fn_args: Optional[Dict[str, Any]] = None) -> None:
        super().__init__(shaping_fn, shaping_fn_args)
        self.metric = MeteorMetric()

    requirement_errors = staticmethod(MeteorMetric.requirement_errors)


class RougeReward(ScoreReward):
    """ROUGE F-measure of type ``rouge_type`` (rouge1, rouge2, rougeL, rougeLsum), stemmed."""

    def __init__(self, rouge_type: str = "rouge1", use_single_ref: bool = True, shaping_fn: Optional[str] = None,
                 shaping_fn_args: Optional[Dict[str, Any]] = None) -> None:
        super().__init__(shaping_fn, shaping_fn_args)
        self.scorer = RougeScorer([rouge_type], use_stemmer=True, use_single_ref=use_single_ref)
        self.rouge_type = rouge_type

    def scores(self, prompt_texts: List[str], gen_texts: List[str], ref_texts: List[List[str]],
               meta_infos: Optional[List[Dict[str, Any]]]) -> List[float]:
        return [self.scorer.scores(gen, refs)[self.rouge_type] for gen, refs in zip(gen_texts, ref_texts)]


class RougeCombinedReward(ScoreReward):
    """Mean of ROUGE-1, ROUGE-2 and ROUGE-L F-measures against the first reference."""

    def __init__(self, shaping_fn: Optional[str] = None, shaping_fn_args: Optional[Dict[str, Any]] = None) -> None:
        super().__init__(shaping_fn, shaping_fn_args)
        self.scorer = RougeScorer(ROUGE_TYPES[:3], use_stemmer=True, use_single_ref=True)

    def scores(self, prompt_texts: List[str], gen_texts: List[str], ref_texts: List[List[str]],
               meta_infos: Optional[List[Dict[str, Any]]]) -> List[float]:
        return [sum(self.scorer.scores(gen, refs).values()) / 3 for gen, refs in zip(gen_texts, ref_texts)]


class RougeLMaxReward(MetricReward):
    """ROUGE-L F-score against the best-matching reference (py-rouge, as RL4LMs computes it).

    Args: py-rouge's arguments as for the ``rouge_l_max`` metric (:class:`RougeLMaxMetric`), and
    ``shaping_fn`` / ``shaping_fn_args``, a registered reward added to the score.
    """

    def __init__(self, max_n: Optional[int] = None, limit_length: bool = True, length_limit: int = 665,
                 length_limit_type: str = "bytes", apply_avg: bool = True, apply_best: bool = False,
                 alpha: float = 0.5, weight_factor: float = 1.0, stemming: bool = True,
                 shaping_fn: Optional[str] = None, shaping_fn_args: Optional[Dict[str, Any]] = None) -> None:
        super().__init__(shaping_fn, shaping_fn_args)
        self.metric = RougeLMaxMetric(max_n, limit_length, length_limit, length_limit_type, apply_avg, apply_best,
                                      alpha, weight_factor, stemming)


class BLEUReward(MetricReward):
    """Smoothed sentence BLEU-4 on whitespace tokens (NLTK), so that partial matches earn reward."""

    def __init__(self, max_order: int = 4, shaping_fn: Optional[str] = None,
                 shaping_fn_args: Optional[Dict[str, Any]] = None) -> None:
        super().__init__(shaping_fn, shaping_fn_args)
        self.metric = BLEUMetric(max_order)


class SacreBLEUReward(MetricReward):
    """Sentence sacreBLEU / 100 (``tokenize`` etc. as for the ``sacre_bleu`` metric)."""

    def __init__(self, tokenize: Optional[str] = None, lowercase: bool = False, smooth_method: str = "exp",
                 smooth_value: Optional[float] = None, shaping_fn: Optional[str] = None,
                 shaping_fn_args: Optional[Dict[str, Any]] = None) -> None:
        super().__init__(shaping_fn, shaping_fn_args)
        self.metric = SacreBLEUMetric(tokenize, lowercase, smooth_method, smooth_value)


class ChrFReward(MetricReward):
    """Sentence chrF / 100."""

    def __init__(self, char_order: int = 6, word_order: int = 0, beta: int = 2, shaping_fn: Optional[str] = None,
                 shaping_fn_args: Optional[Dict[str, Any]] = None) -> None:
        super().__init__(shaping_fn, shaping_fn_args)
        self.metric = ChrFMetric(char_order, word_order, beta)


class TERReward(MetricReward):
    """1 - sentence TER / 100 (higher is better; negative when the edits outnumber the reference words).
    An episode without references gets 0, since the ``ter`` metric scores it 1."""

    def __init__(self, shaping_fn: Optional[str] = None, shaping_fn_args: Optional[Dict[str, Any]] = None) -> None:
        super().__init__(shaping_fn, shaping_fn_args)
        self.metric = TERMetric()

    def scores(self, prompt_texts: List[str], gen_texts: List[str], ref_texts: List[List[str]],
               meta_infos: Optional[List[Dict[str, Any]]]) -> List[float]:
        return [1.0 - ter for ter in super().scores(prompt_texts, gen_texts, ref_texts, meta_infos)]


class BERTScoreReward(ScoreReward):
    """BERTScore F1 against the references (any encoder: ``model_type`` + ``num_layers``)."""

    def __init__(self, language: str = "en", model_type: Optional[str] = None, num_layers: Optional[int] = None,
                 batch_size: int = 32, device: Optional[str] = None, shaping_fn: Optional[str] = None,
                 shaping_fn_args: Optional[Dict[str, Any]] = None) -> None:
        super().__init__(shaping_fn, shaping_fn_args)
        self.scorer = BERTScorer(language, model_type, num_layers, batch_size, idf=False, device=device)

    def scores(self, prompt_texts: List[str], gen_texts: List[str], ref_texts: List[List[str]],
               meta_infos: Optional[List[Dict[str, Any]]]) -> List[float]:
        return self.scorer.f1(gen_texts, ref_texts)
