"""``py-rouge``, the ROUGE implementation behind RL4LMs' ``rouge_l_max``, on current Python.

Two things stop ``import rouge`` (py-rouge 1.1) from working as shipped: it imports
``pkg_resources``, which setuptools 81 removed, only to find the word lists next to its own module;
and its tokenizer is ``nltk.word_tokenize``, which needs NLTK's Punkt download. py-rouge reduces
every text to ``[A-Za-z0-9 ]`` before tokenizing, so the download-free tokenizer of
:mod:`rl4lms.scoring.tokenize` gives the same tokens.
"""
from __future__ import annotations

import os
import sys
import types
from functools import lru_cache
from typing import Any, Dict, List

from rl4lms.scoring.tokenize import word_tokenize

PY_ROUGE_ARGS = ("max_n", "limit_length", "length_limit", "length_limit_type", "apply_avg", "apply_best",
                 "alpha", "weight_factor", "stemming")
"""The ``rouge.Rouge`` arguments a config may set (RL4LMs passes them through)."""


def _resource_filename(module_name: str, resource: str) -> str:
    return os.path.join(os.path.dirname(sys.modules[module_name].__file__ or ""), resource)


@lru_cache(maxsize=1)
def rouge_class() -> type:
    """py-rouge's ``Rouge``, imported with a stand-in ``pkg_resources`` where setuptools has none."""
    shim = None
    if "pkg_resources" not in sys.modules:
        try:
            import pkg_resources  # noqa: F401  (setuptools < 81 still has it)
        except ImportError:
            shim = types.ModuleType("pkg_resources")
            shim.resource_filename = _resource_filename  # type: ignore[attr-defined]
            sys.modules["pkg_resources"] = shim
    try:
        import rouge
    except ImportError as error:
        raise ImportError("rouge_l_max computes ROUGE-L with py-rouge, as RL4LMs does: pip install py-rouge") from error
    finally:
        if shim is not None:
            del sys.modules["pkg_resources"]  # py-rouge keeps its own reference

    class Rouge(rouge.Rouge):
        @staticmethod
        def tokenize_text(text: str, language: str = "english") -> List[str]:
            return word_tokenize(text)

    return Rouge


def rouge_l_scorer(**args: Any) -> Any:
    """A py-rouge scorer of ROUGE-L with ``args`` (see :data:`PY_ROUGE_ARGS`)."""
    unknown = sorted(set(args) - set(PY_ROUGE_ARGS))
    if unknown:
        raise ValueError(f"unknown py-rouge arguments {unknown}; valid: {', '.join(PY_ROUGE_ARGS)}")
    scorer = rouge_class()(metrics=["rouge-l"], **args)
    scorer.load_stemmer(scorer.ensure_compatibility)
    return scorer


def rouge_l_f(scores: Dict[str, Any]) -> float:
    """The ROUGE-L F-score of one hypothesis against one reference, whatever ``apply_avg`` /
    ``apply_best`` made of the result's shape."""
    value: Any = scores["rouge-l"]
    if isinstance(value, list):
        value = value[0]
    f_score = value["f"]
    return float(f_score[0] if isinstance(f_score, list) else f_score)
