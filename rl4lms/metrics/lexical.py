"""N-gram overlap metrics computed with the reference libraries (``rouge-score``, ``sacrebleu``, ``nltk``).

Each metric returns per-sample scores and a corpus score under RL4LMs' names (``lexical/...``).
:meth:`SentenceMetric.sentence_scores` is the per-sample score that the matching reward uses.
A sample without references scores 0 (TER: 1); the corpus BLEU, sacreBLEU, chrF and TER leave such
samples out.
NLTK (also behind ``rouge-score``) is imported when a metric that needs it is built: importing it
costs about a second.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

from sacrebleu.metrics import BLEU, CHRF, TER

from rl4lms.metrics.base import BaseMetric, MetricResult, SentenceMetric, mean_score
from rl4lms.metrics.bleu import nmt_corpus_bleu
from rl4lms.metrics.py_rouge import rouge_l_f, rouge_l_scorer
from rl4lms.scoring.tokenize import word_tokenize
from rl4lms.metrics.wordnet import load_wordnet, wordnet_missing

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")


def _with_references(generated_texts: Sequence[str], reference_texts: Sequence[Sequence[str]]
                     ) -> Tuple[List[str], List[Sequence[str]]]:
    """The generations and references of the samples that have at least one reference."""
    kept = [(gen, refs) for gen, refs in zip(generated_texts, reference_texts) if refs]
    return [gen for gen, _ in kept], [refs for _, refs in kept]


def _reference_streams(references: Sequence[Sequence[str]]) -> List[List[Optional[str]]]:
    """sacrebleu's layout: one stream per reference position, ``None`` where a sample has fewer."""
    width = max((len(refs) for refs in references), default=0)
    return [[refs[k] if k < len(refs) else None for refs in references] for k in range(width)]


class MeteorMetric(SentenceMetric):
    """METEOR (NLTK, WordNet synonyms, alpha 0.9, beta 3, gamma 0.5) on NLTK word tokens; the corpus
    score is the mean."""

    name = "lexical/meteor"

    def __init__(self, alpha: float = 0.9, beta: float = 3.0, gamma: float = 0.5) -> None:
        from nltk.translate.meteor_score import meteor_score

        self.params = {"alpha": alpha, "beta": beta, "gamma": gamma}
        self.wordnet = load_wordnet()
        self.meteor_score = meteor_score

    @staticmethod
    def requirement_errors(**_: Any) -> List[str]:
        """WordNet, which validation checks before any model loads."""
        missing = wordnet_missing()
        return [missing] if missing else []

    def sentence_scores(self, prompt_texts: List[str], generated_texts: List[str],
                        reference_texts: List[List[str]], meta_infos: Optional[List[Dict[str, Any]]] = None
                        ) -> List[float]:
        return [float(self.meteor_score([word_tokenize(r) for r in refs], word_tokenize(gen),
                                        wordnet=self.wordnet, **self.params)) if refs else 0.0
                for gen, refs in zip(generated_texts, reference_texts)]


class RougeScorer:
    """ROUGE F-measures from ``rouge-score``; several references give the best score per type."""

    def __init__(self, rouge_types: Sequence[str], use_stemmer: bool, use_single_ref: bool) -> None:
        from rouge_score import rouge_scorer  # imports NLTK

        unknown = [t for t in rouge_types if t not in ROUGE_TYPES]
        if unknown:
            raise ValueError(f"unknown rouge type(s) {unknown}; valid: {', '.join(ROUGE_TYPES)}")
        self.rouge_types = list(rouge_types)
        self.use_single_ref = use_single_ref
        self.scorer = rouge_scorer.RougeScorer(self.rouge_types, use_stemmer=use_stemmer)

    def scores(self, generated: str, references: Sequence[str]) -> Dict[str, float]:
        if not references:
            return {t: 0.0 for t in self.rouge_types}
        refs = list(references[:1]) if self.use_single_ref else list(references)
        results = self.scorer.score_multi(refs, generated)
        return {t: float(results[t].fmeasure) for t in self.rouge_types}


class RougeMetric(BaseMetric):
    """ROUGE-1/2/L/Lsum F-measures with stemming (``lexical/rouge_<type>``); corpus = mean over samples."""

    def __init__(self, use_single_ref: bool = True, use_stemmer: bool = True) -> None:
        self.scorer = RougeScorer(ROUGE_TYPES, use_stemmer, use_single_ref)

    def compute(self, prompt_texts: List[str], generated_texts: List[str], reference_texts: List[List[str]],
                meta_infos: Optional[List[Dict[str, Any]]] = None, model: Any = None,
                split_name: Optional[str] = None) -> MetricResult:
        per_sample = [self.scorer.scores(gen, refs) for gen, refs in zip(generated_texts, reference_texts)]
        result: MetricResult = {}
        for rouge_type in ROUGE_TYPES:
            scores = [s[rouge_type] for s in per_sample]
            result[f"lexical/rouge_{rouge_type}"] = (scores, mean_score(scores))
        return result


class RougeLMaxMetric(SentenceMetric):
    """ROUGE-L F-score against the best-matching reference (NarrativeQA's metric), computed with
    py-rouge as RL4LMs does: each reference is scored on its own and the best F-score is kept.

    Args (py-rouge's ``Rouge`` arguments, with its defaults):
        max_n: largest n of ROUGE-N (py-rouge needs it only for ROUGE-N; kept for RL4LMs' configs).
        limit_length: cut hypothesis and reference to ``length_limit`` first.
        length_limit: the limit, in ``length_limit_type`` units.
        length_limit_type: "words" or "bytes".
        apply_avg: average over references (one reference per call here, so the same as apply_best).
        apply_best: keep the best reference's score.
        alpha: F-score weight of precision against recall (0.5: the harmonic mean).
        weight_factor: ROUGE-W weight (> 1 favours consecutive matches; used by ROUGE-W only).
        stemming: Porter-stem the tokens (py-rouge's WordNet-compatible stemmer).
    """

    name = "lexical/rouge_l_max"

    def __init__(self, max_n: Optional[int] = None, limit_length: bool = True, length_limit: int = 665,
                 length_limit_type: str = "bytes", apply_avg: bool = True, apply_best: bool = False,
                 alpha: float = 0.5, weight_factor: float = 1.0, stemming: bool = True) -> None:
        if length_limit_type not in ("words", "bytes"):
            raise ValueError(f"length_limit_type must be 'words' or 'bytes', got {length_limit_type!r}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        self.scorer = rouge_l_scorer(max_n=max_n, limit_length=limit_length, length_limit=length_limit,
                                     length_limit_type=length_limit_type, apply_avg=apply_avg, apply_best=apply_best,
                                     alpha=alpha, weight_factor=weight_factor, stemming=stemming)

    def best_f_score(self, generated: str, references: Sequence[str]) -> float:
        return max((rouge_l_f(self.scorer.get_scores(generated, [reference])) for reference in references),
                   default=0.0)

    def sentence_scores(self, prompt_texts: List[str], generated_texts: List[str],
                        reference_texts: List[List[str]], meta_infos: Optional[List[Dict[str, Any]]] = None
                        ) -> List[float]:
        return [self.best_f_score(gen, refs) for gen, refs in zip(generated_texts, reference_texts)]


class BLEUMetric(SentenceMetric):
    """BLEU-4 on whitespace tokens: corpus BLEU as RL4LMs computes it (:func:`nmt_corpus_bleu`), and
    NLTK's sentence BLEU with smoothing per sample, so that partial matches score above 0."""

    name = "lexical/bleu"

    def __init__(self, max_order: int = 4) -> None:
        from nltk.translate import bleu_score

        if max_order < 1:
            raise ValueError(f"max_order must be at least 1, got {max_order}")
        self.max_order = max_order
        self.weights = tuple([1.0 / max_order] * max_order)
        self.bleu = bleu_score
        self.smoothing = bleu_score.SmoothingFunction().method1

    def sentence_scores(self, prompt_texts: List[str], generated_texts: List[str],
                        reference_texts: List[List[str]], meta_infos: Optional[List[Dict[str, Any]]] = None
                        ) -> List[float]:
        return [float(self.bleu.sentence_bleu([r.split() for r in refs], gen.split(), self.weights,
                                              smoothing_function=self.smoothing)) if refs and gen.split() else 0.0
                for gen, refs in zip(generated_texts, reference_texts)]

    def corpus_score(self, generated_texts: List[str], reference_texts: List[List[str]],
                     sentence_scores: List[float]) -> float:
        generated, references = _with_references(generated_texts, reference_texts)
        return nmt_corpus_bleu([gen.split() for gen in generated], [[r.split() for r in refs] for refs in references],
                               self.max_order)


class _SacreMetric(SentenceMetric):
    """A ``sacrebleu`` metric object; scores are divided by 100 as in RL4LMs."""

    no_reference_score = 0.0
    """The per-sample score of a sample without references: the worst score."""

    def __init__(self, metric: Any, sentence_metric: Any = None) -> None:
        self.metric = metric
        self.sentence_metric = sentence_metric or metric

    def sentence_scores(self, prompt_texts: List[str], generated_texts: List[str],
                        reference_texts: List[List[str]], meta_infos: Optional[List[Dict[str, Any]]] = None
                        ) -> List[float]:
        return [self.sentence_metric.sentence_score(gen, list(refs)).score / 100 if refs else self.no_reference_score
                for gen, refs in zip(generated_texts, reference_texts)]

    def corpus_score(self, generated_texts: List[str], reference_texts: List[List[str]],
                     sentence_scores: List[float]) -> float:
        generated, references = _with_references(generated_texts, reference_texts)
        if not generated:
            return self.no_reference_score
        return self.metric.corpus_score(generated, _reference_streams(references)).score / 100


class SacreBLEUMetric(_SacreMetric):
    """sacreBLEU (``sacrebleu.metrics.BLEU`` options, e.g. ``tokenize: intl``); sentence scores use
    ``effective_order``, as sacrebleu advises for single sentences."""

    name = "lexical/sacrebleu"

    def __init__(self, tokenize: Optional[str] = None, lowercase: bool = False, smooth_method: str = "exp",
                 smooth_value: Optional[float] = None, max_ngram_order: int = 4) -> None:
        options = dict(tokenize=tokenize, lowercase=lowercase, smooth_method=smooth_method,
                       smooth_value=smooth_value, max_ngram_order=max_ngram_order)
        super().__init__(BLEU(**options), BLEU(**options, effective_order=True))


class ChrFMetric(_SacreMetric):
    """chrF (``sacrebleu.metrics.CHRF``; ``word_order: 2`` gives chrF++)."""

    name = "lexical/chrf"

    def __init__(self, char_order: int = 6, word_order: int = 0, beta: int = 2, lowercase: bool = False,
                 whitespace: bool = False) -> None:
        super().__init__(CHRF(char_order=char_order, word_order=word_order, beta=beta, lowercase=lowercase,
                              whitespace=whitespace))


class TERMetric(_SacreMetric):
    """Translation edit rate (``sacrebleu.metrics.TER``; lower is better). A sample without references
    scores 1, sacrebleu's TER of a hypothesis against an empty reference; without any reference in
    the split there is no ``lexical/ter`` at all, rather than a perfect 0."""

    name = "lexical/ter"
    no_reference_score = 1.0

    def __init__(self, normalized: bool = False, no_punct: bool = False, asian_support: bool = False,
                 case_sensitive: bool = False) -> None:
        super().__init__(TER(normalized=normalized, no_punct=no_punct, asian_support=asian_support,
                             case_sensitive=case_sensitive))

    def compute(self, prompt_texts: List[str], generated_texts: List[str], reference_texts: List[List[str]],
                meta_infos: Optional[List[Dict[str, Any]]] = None, model: Any = None,
                split_name: Optional[str] = None) -> MetricResult:
        if not any(reference_texts):
            return {}
        return super().compute(prompt_texts, generated_texts, reference_texts, meta_infos, model, split_name)
