"""CIDEr-D (Vedantam et al., 2015) as the COCO caption toolkit computes it, in plain Python.

TF-IDF weighted n-gram vectors (n = 1..4), document frequencies over the references of the
evaluated corpus, clipped cosine similarity with a Gaussian length penalty (sigma 6), times 10.
Texts are tokenized close to COCO's PTB tokenizer: NLTK word tokens
(:func:`rl4lms.scoring.tokenize.word_tokenize`), lower-cased, without the punctuation tokens that
COCO removes (PTB's ``-LRB-`` / ``-RRB-`` / ``-LCB-`` / ``-RCB-`` are NLTK's parentheses and braces).
RL4LMs' own copy (from CommonGen's evaluation) keeps case and punctuation, on spaCy tokens.
"""
from __future__ import annotations

import math
from collections import Counter
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from rl4lms.metrics.base import BaseMetric, MetricResult
from rl4lms.scoring.tokenize import word_tokenize

NGram = Tuple[str, ...]
COCO_PUNCTUATION = frozenset(["''", "'", "``", "`", "(", ")", "{", "}", ".", "?", "!", ",", ":", "-", "--", "...",
                              ";"])


def caption_words(text: str) -> List[str]:
    """The lower-cased word tokens of ``text`` without punctuation, as COCO's tokenizer gives them."""
    return [token.lower() for token in word_tokenize(text) if token not in COCO_PUNCTUATION]


def ngram_counts(text: str, max_n: int) -> Counter:
    words = caption_words(text)
    return Counter(tuple(words[i:i + n]) for n in range(1, max_n + 1) for i in range(len(words) - n + 1))


class _TfIdf:
    """One text as per-order TF-IDF vectors with their norms and its length."""

    def __init__(self, counts: Counter, document_frequency: Counter, log_corpus_size: float, max_n: int) -> None:
        self.vectors: List[Dict[NGram, float]] = [{} for _ in range(max_n)]
        norms = [0.0] * max_n
        self.length = 0.0
        for ngram, term_frequency in counts.items():
            order = len(ngram) - 1
            weight = term_frequency * (log_corpus_size - math.log(max(1.0, document_frequency[ngram])))
            self.vectors[order][ngram] = weight
            norms[order] += weight ** 2
            if order == 1:  # the COCO toolkit measures length in bigrams; kept for comparable scores
                self.length += term_frequency
        self.norms = [math.sqrt(n) for n in norms]


def _similarity(hyp: _TfIdf, ref: _TfIdf, sigma: float) -> np.ndarray:
    delta = hyp.length - ref.length
    values = np.zeros(len(hyp.vectors))
    for order, (hyp_vector, ref_vector) in enumerate(zip(hyp.vectors, ref.vectors)):
        overlap = sum(min(weight, ref_vector.get(ngram, 0.0)) * ref_vector.get(ngram, 0.0)
                      for ngram, weight in hyp_vector.items())
        if hyp.norms[order] != 0 and ref.norms[order] != 0:
            overlap /= hyp.norms[order] * ref.norms[order]
        values[order] = overlap * math.exp(-(delta ** 2) / (2 * sigma ** 2))
    return values


def cider_d(generated_texts: Sequence[str], reference_texts: Sequence[Sequence[str]], max_n: int = 4,
            sigma: float = 6.0) -> Tuple[float, List[float]]:
    """(corpus score, per-sample scores); document frequencies come from these references."""
    ref_counts = [[ngram_counts(r, max_n) for r in refs] for refs in reference_texts]
    document_frequency: Counter = Counter()
    for counts in ref_counts:
        document_frequency.update(set().union(*counts) if counts else set())
    log_corpus_size = math.log(float(len(reference_texts))) if reference_texts else 0.0
    scores = []
    for gen, counts in zip(generated_texts, ref_counts):
        if not counts:
            scores.append(0.0)
            continue
        hyp = _TfIdf(ngram_counts(gen, max_n), document_frequency, log_corpus_size, max_n)
        refs = [_TfIdf(c, document_frequency, log_corpus_size, max_n) for c in counts]
        total = sum(_similarity(hyp, ref, sigma) for ref in refs)
        scores.append(float(np.mean(total) / len(refs) * 10.0))
    return (float(np.mean(scores)) if scores else 0.0), scores


class CIDErMetric(BaseMetric):
    """CIDEr-D over the evaluated split (``lexical/cider``), per sample and corpus mean."""

    def __init__(self, max_n: int = 4, sigma: float = 6.0) -> None:
        if max_n < 1 or sigma <= 0:
            raise ValueError(f"max_n must be >= 1 and sigma > 0, got max_n={max_n}, sigma={sigma}")
        self.max_n = max_n
        self.sigma = sigma

    def compute(self, prompt_texts: List[str], generated_texts: List[str], reference_texts: List[List[str]],
                meta_infos: Optional[List[Dict[str, Any]]] = None, model: Any = None,
                split_name: Optional[str] = None) -> MetricResult:
        corpus, per_sample = cider_d(generated_texts, reference_texts, self.max_n, self.sigma)
        return {"lexical/cider": (per_sample, corpus)}
