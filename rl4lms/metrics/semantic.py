"""Model-based metrics: BERTScore (``bert-score`` library) and a learned classifier's probability."""
from __future__ import annotations

from typing import Any, Dict, List, Optional

import numpy as np

from rl4lms.errors import ModelLoadError
from rl4lms.metrics.base import BaseMetric, MetricResult
from rl4lms.models.classifier import TextClassifier
from rl4lms.models.loading import default_device, resolve_model_name


def classifier_inputs(prompt_texts: List[str], generated_texts: List[str], include_prompt: bool) -> List[str]:
    """What a learned reward model reads: the generation, after its prompt when ``include_prompt``."""
    return [(prompt + gen) if include_prompt else gen for prompt, gen in zip(prompt_texts, generated_texts)]


class LearnedRewardMetric(BaseMetric):
    """Probability of label ``label_ix`` under a sequence classifier, or the score of a one-output reward
    model (``semantic/learned_automodel_metric``)."""

    def __init__(self, model_name: str, label_ix: int, batch_size: int = 32, include_prompt_for_eval: bool = True,
                 device: Optional[str] = None) -> None:
        self.classifier = TextClassifier(model_name, batch_size, device)
        self.classifier.check_label(label_ix)
        self.label_ix = label_ix
        self.include_prompt = include_prompt_for_eval

    def compute(self, prompt_texts: List[str], generated_texts: List[str], reference_texts: List[List[str]],
                meta_infos: Optional[List[Dict[str, Any]]] = None, model: Any = None,
                split_name: Optional[str] = None) -> MetricResult:
        texts = classifier_inputs(prompt_texts, generated_texts, self.include_prompt)
        scores = self.classifier.label_scores(texts, self.label_ix)
        return {"semantic/learned_automodel_metric": (scores, float(np.mean(scores)) if scores else 0.0)}


class BERTScorer:
    """BERTScore F1 of each generation against its references (best reference), via ``bert-score``.

    ``model_type`` is any encoder: a hub id, a local folder or an embedded name; ``num_layers``
    is the layer whose embeddings are matched (required for encoders ``bert-score`` does not know).
    """

    def __init__(self, language: str = "en", model_type: Optional[str] = None, num_layers: Optional[int] = None,
                 batch_size: int = 32, idf: bool = False, device: Optional[str] = None) -> None:
        import bert_score

        model = resolve_model_name(model_type) if model_type else None
        try:
            self.scorer = bert_score.BERTScorer(model_type=model, num_layers=num_layers, lang=language,
                                                batch_size=batch_size, idf=idf, device=device or default_device())
        except OSError as error:
            raise ModelLoadError(f"could not load BERTScore encoder '{model_type or language}': {error}. Offline? "
                                 "Pass model_type: <local encoder folder> and num_layers.") from error
        except KeyError as error:
            raise ValueError(f"bert_score needs num_layers for encoder '{model_type}' ({error})") from error
        self.idf = idf

    def f1(self, generated_texts: List[str], reference_texts: List[List[str]]) -> List[float]:
        """F1 per sample; an empty generation, or one without a non-empty reference, scores 0."""
        references = [[r for r in refs if r.strip()] for refs in reference_texts]
        scored = [ix for ix, refs in enumerate(references) if refs and generated_texts[ix].strip()]
        scores = [0.0] * len(generated_texts)
        if scored:
            refs = [references[ix] for ix in scored]
            if self.idf:
                self.scorer.compute_idf([r for group in refs for r in group])
            _, _, f1 = self.scorer.score([generated_texts[ix] for ix in scored], refs, verbose=False)
            for ix, value in zip(scored, f1.tolist()):
                scores[ix] = float(value)
        return scores


class BERTScoreMetric(BaseMetric):
    """BERTScore F1 per sample and its mean (``semantic/bert_score``)."""

    def __init__(self, language: str = "en", model_type: Optional[str] = None, num_layers: Optional[int] = None,
                 batch_size: int = 32, idf: bool = False, device: Optional[str] = None) -> None:
        self.scorer = BERTScorer(language, model_type, num_layers, batch_size, idf, device)

    def compute(self, prompt_texts: List[str], generated_texts: List[str], reference_texts: List[List[str]],
                meta_infos: Optional[List[Dict[str, Any]]] = None, model: Any = None,
                split_name: Optional[str] = None) -> MetricResult:
        scores = self.scorer.f1(generated_texts, reference_texts)
        return {"semantic/bert_score": (scores, float(np.mean(scores)) if scores else 0.0)}
