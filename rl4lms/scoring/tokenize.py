"""Word tokenization shared by the metrics and the data pools: NLTK's ``word_tokenize`` without a download.

``nltk.word_tokenize`` splits sentences with the trained English Punkt model (a separate download)
and then tokenizes each sentence, so that the period of every sentence becomes its own token.
:func:`word_tokenize` does the same with an untrained ``PunktSentenceTokenizer``, which needs no
data; it splits at every sentence-final punctuation mark followed by a space (it knows no
abbreviations, so "Mr. Smith" is two sentences). NLTK is imported on first use: see
:mod:`rl4lms.metrics.lexical`.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any, List, Tuple


@lru_cache(maxsize=1)
def _tokenizers() -> Tuple[Any, Any]:
    from nltk.tokenize import NLTKWordTokenizer, PunktSentenceTokenizer

    return PunktSentenceTokenizer(), NLTKWordTokenizer()


def word_tokenize(text: str) -> List[str]:
    """Treebank word tokens of each sentence of ``text``, in order."""
    sentences, words = _tokenizers()
    return [token for sentence in sentences.tokenize(text) for token in words.tokenize(sentence)]
