"""Corpus BLEU as the TensorFlow NMT ``compute_bleu`` computes it (HF ``bleu``, RL4LMs' ``lexical/bleu``).

RL4LMs splits texts on whitespace and passes the tokens to ``datasets.load_metric("bleu")``, which
runs the NMT script without smoothing. It differs from NLTK's ``corpus_bleu`` in the brevity
penalty: the reference length of a sample is its *shortest* reference, not the one closest in
length to the hypothesis.
"""
from __future__ import annotations

import math
from collections import Counter
from typing import Sequence

Tokens = Sequence[str]


def _ngrams(tokens: Tokens, n: int) -> Counter:
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def nmt_corpus_bleu(hypotheses: Sequence[Tokens], references: Sequence[Sequence[Tokens]], max_order: int = 4
                    ) -> float:
    """BLEU of tokenized ``hypotheses`` against their tokenized references (each sample needs one).

    Per order n, matches are the hypothesis n-grams clipped by their highest count in any one
    reference, over all hypothesis n-grams; BLEU is the geometric mean of these precisions (0 if
    any is 0) times ``exp(1 - r / c)`` when the hypothesis length c is below the summed shortest
    reference length r. An empty corpus side (c or r = 0) scores 0, where the NMT script divides by zero.
    """
    matches, possible = [0] * max_order, [0] * max_order
    hypothesis_length = reference_length = 0
    for hypothesis, refs in zip(hypotheses, references):
        hypothesis_length += len(hypothesis)
        reference_length += min(len(ref) for ref in refs)
        for n in range(1, max_order + 1):
            best_counts: Counter = Counter()
            for ref in refs:
                best_counts |= _ngrams(ref, n)
            matches[n - 1] += sum((_ngrams(hypothesis, n) & best_counts).values())
            possible[n - 1] += max(len(hypothesis) - n + 1, 0)
    if hypothesis_length == 0 or reference_length == 0 or 0 in matches:
        return 0.0
    log_precision = sum(math.log(m / p) for m, p in zip(matches, possible)) / max_order
    brevity_penalty = min(1.0, math.exp(1 - reference_length / hypothesis_length))
    return math.exp(log_precision) * brevity_penalty
