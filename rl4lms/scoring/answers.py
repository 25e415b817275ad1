"""Final answers of verifiable tasks (arithmetic, GSM8K): reading the answer out of a text and
comparing it with the sample's answer. The ``exact_match_answer`` metric and reward and the GSM8K pool
use it.

An answer is read with one or more *extractions*, tried in order until one finds something:

* ``whole``: the whole text, when it is one number (spaces and one trailing period aside);
* ``marker``: the first number after the first ``####`` (GSM8K's final line, ``#### 42``; the first,
  since a model that goes on after its answer may write further problems and their answers);
* ``first_number`` / ``last_number``: the first / last number anywhere in the text.

Numbers may carry a sign, thousands commas (``1,234``) and decimals (``-3.5``), and are compared by
value in :func:`canonical_number` form, so ``+1,200.50``, ``1200.5`` and ``1200.50.`` are the same
answer. An expected answer that is not a number matches no generation.
"""
from __future__ import annotations

import re
from decimal import Decimal
from typing import Any, Dict, List, Optional, Sequence, Union


ANSWER_MARKER = "####"
EXTRACTIONS = ("whole", "marker", "first_number", "last_number")
NUMBER = re.compile(r"(?:(?<![\d.])[-+])?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?")
"""A number: an optional sign (not right after a digit, so ``10-3`` is 10 and 3), digits or
comma-grouped thousands, and optional decimals. A trailing period (``42.``) is not part of it."""

Extraction = Union[str, List[str]]


def canonical_number(number: str) -> str:
    """A matched :data:`NUMBER` in plain decimal form: no ``+``, commas, trailing zeros or ``-0``."""
    value = Decimal(number.replace(",", "").lstrip("+")).normalize()
    return format(value if value != 0 else Decimal(0), "f")


def whole_number(text: str) -> Optional[str]:
    """The text as a :func:`canonical_number` when it is one number (spaces and one trailing period
    aside), else None."""
    stripped = text.strip()
    number = stripped[:-1].rstrip() if stripped.endswith(".") else stripped
    return canonical_number(number) if NUMBER.fullmatch(number) else None


def extraction_steps(extraction: Extraction) -> List[str]:
    """``extraction`` (one name or a list, tried in order) checked against :data:`EXTRACTIONS`."""
    steps = [extraction] if isinstance(extraction, str) else list(extraction)
    unknown = [step for step in steps if step not in EXTRACTIONS]
    if not steps or unknown:
        raise ValueError(f"extraction: expected one of {', '.join(EXTRACTIONS)} or a non-empty list of "
                         f"them, got {extraction!r}")
    return steps


def _extract_once(text: str, step: str) -> Optional[str]:
    if step == "whole":
        return whole_number(text)
    if step == "marker":
        if ANSWER_MARKER not in text:
            return None
        text = text.split(ANSWER_MARKER, 1)[1]
        step = "first_number"
    numbers = NUMBER.findall(text)
    if not numbers:
        return None
    return canonical_number(numbers[0] if step == "first_number" else numbers[-1])


def extract_answer(text: str, steps: Sequence[str]) -> Optional[str]:
    """The answer (a :func:`canonical_number`) found by the first of ``steps`` that finds one; None if none does."""
    for step in steps:
        answer = _extract_once(text, step)
        if answer is not None:
            return answer
    return None


def expected_answers(references: Sequence[str], meta_info: Optional[Dict[str, Any]], answer_key: str,
                     steps: Sequence[str]) -> List[str]:
    """The sample's answer, ``meta_info[answer_key]`` (when it is a number); without that key, the
    answer of each reference read with ``steps``."""
    if meta_info is not None and answer_key in meta_info:
        answer = whole_number(str(meta_info[answer_key]))
        return [answer] if answer is not None else []
    return [answer for answer in (extract_answer(ref, steps) for ref in references) if answer is not None]


class AnswerChecker:
    """Reads each generation's answer and compares it with the sample's (shared by the metric and the reward)."""

    def __init__(self, extraction: Extraction, answer_key: str) -> None:
        self.steps = extraction_steps(extraction)
        self.answer_key = answer_key

    def answers(self, generated_texts: Sequence[str]) -> List[Optional[str]]:
        return [extract_answer(text, self.steps) for text in generated_texts]

    def correct(self, answers: Sequence[Optional[str]], reference_texts: Sequence[Sequence[str]],
                meta_infos: Optional[Sequence[Dict[str, Any]]]) -> List[float]:
        """1.0 where the extracted answer equals the expected one, else 0.0."""
        metas = meta_infos if meta_infos is not None else [None] * len(answers)
        return [float(answer is not None and answer in expected_answers(refs, meta, self.answer_key, self.steps))
                for answer, refs, meta in zip(answers, reference_texts, metas)]
