"""Synthetic data pools that need no download: RL4LMs' ``dummy_pool``, prompt pools for the
increasing-numbers and dates tasks, and arithmetic problems with a verifiable answer."""
from __future__ import annotations

import datetime as dt
import operator
from typing import Callable, Dict, List, Union

import numpy as np

from rl4lms.data_pools.text_gen_pool import Sample, TextGenPool

_SPLIT_SEEDS = {"train": 0, "val": 1, "test": 2}


def _check_split(split: str) -> None:
    if split not in _SPLIT_SEEDS:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(_SPLIT_SEEDS)}")


def _split_rng(split: str, seed: int) -> np.random.Generator:
    _check_split(split)
    return np.random.default_rng([seed, _SPLIT_SEEDS[split]])


def _check_count(n_samples: int) -> None:
    if n_samples < 1:
        raise ValueError(f"datapool.args.n_samples must be at least 1, got {n_samples}")


class DummyPool(TextGenPool):
    """The same prompt repeated ``n_samples`` times, with no references (RL4LMs' test pool)."""

    @classmethod
    def prepare(cls, split: str, prompt: str, n_samples: int = 100) -> "DummyPool":
        _check_split(split)
        _check_count(n_samples)
        return cls([Sample(id=f"{split}_{ix}", prompt_or_input_text=prompt) for ix in range(n_samples)])


class IncreasingNumbersPool(TextGenPool):
    """Prompts that start a run of increasing numbers; references continue the run."""

    @classmethod
    def prepare(cls, split: str, n_samples: int = 100, prompt_numbers: int = 1,
                reference_numbers: int = 8, seed: int = 0) -> "IncreasingNumbersPool":
        _check_count(n_samples)
        rng = _split_rng(split, seed)
        samples: List[Sample] = []
        for ix in range(n_samples):
            start = int(rng.integers(0, 50))
            steps = rng.integers(1, 10, size=prompt_numbers + reference_numbers)
            numbers = (start + np.cumsum(steps)).tolist()
            prompt = " ".join(str(n) for n in numbers[:prompt_numbers])
            reference = " ".join(str(n) for n in numbers[prompt_numbers:])
            samples.append(Sample(id=f"{split}_{ix}", prompt_or_input_text=prompt, references=[reference]))
        return cls(samples)


_DATE_PROMPTS = ["The meeting is on", "She was born on", "Deadline:", "We met on", "The store opened on",
                 "Posted", "The flight leaves on", "It happened on"]


class DatesPool(TextGenPool):
    """Sentence openings that invite a date; references give one in ISO ``YYYY-MM-DD`` form."""

    @classmethod
    def prepare(cls, split: str, n_samples: int = 100, seed: int = 0) -> "DatesPool":
        _check_count(n_samples)
        rng = _split_rng(split, seed)
        samples: List[Sample] = []
        for ix in range(n_samples):
            prompt = _DATE_PROMPTS[int(rng.integers(len(_DATE_PROMPTS)))]
            date = dt.date(1990, 1, 1) + dt.timedelta(days=int(rng.integers(0, 15000)))
            samples.append(Sample(id=f"{split}_{ix}", prompt_or_input_text=prompt,
                                  references=[f"{prompt} {date.isoformat()}."]))
        return cls(samples)


OPERATIONS: Dict[str, Callable[[int, int], int]] = {"+": operator.add, "-": operator.sub, "*": operator.mul}
_TRAIN_STREAM, _EVAL_STREAM = 0, 1


class SyntheticArithmeticPool(TextGenPool):
    """Arithmetic problems such as ``3+5=``; reference and ``meta_data["answer"]``: the result (``8``);
    ``meta_data`` also holds the problem (``a``, ``op``, ``b``).

    A problem is (a, operation, b) with both operands in [``min_operand``, ``max_operand``]. The val
    and test problems are drawn first, without repeats, from a generator seeded by ``seed`` alone; the
    train problems are drawn from a second one, skipping those. So the three splits never share a
    problem, and val and test stay the same when ``n_samples`` changes.

    Args (``datapool.args``):
        n_samples: train problems (distinct).
        eval_samples: val problems, and as many test problems (distinct).
        operations: "+", "-" or "*", or a list of them (each problem picks one); "-" can give
            negative results.
        min_operand, max_operand: the operands' range, both ends included.
        prompt_template: the prompt, formatted with ``{a}``, ``{op}`` and ``{b}``.
        seed: picks the problems of every split.
    """

    @classmethod
    def prepare(cls, split: str, n_samples: int = 80, eval_samples: int = 10, operations: Union[str, List[str]] = "+",
                min_operand: int = 0, max_operand: int = 9, prompt_template: str = "{a}{op}{b}=",
                seed: int = 0) -> "SyntheticArithmeticPool":
        _check_split(split)
        _check_count(n_samples)
        if eval_samples < 1:
            raise ValueError(f"datapool.args.eval_samples must be at least 1, got {eval_samples}")
        ops = [operations] if isinstance(operations, str) else list(operations)
        if not ops or any(op not in OPERATIONS for op in ops) or len(set(ops)) != len(ops):
            raise ValueError(f"datapool.args.operations: expected one of {', '.join(OPERATIONS)} or a list of "
                             f"distinct ones, got {operations!r}")
        if max_operand < min_operand:
            raise ValueError(f"datapool.args.max_operand ({max_operand}) is below min_operand ({min_operand})")
        width = max_operand - min_operand + 1
        space = len(ops) * width * width
        if n_samples + 2 * eval_samples > space:
            raise ValueError(f"datapool.args: n_samples + 2 x eval_samples = {n_samples + 2 * eval_samples} distinct "
                             f"problems, but operands {min_operand}..{max_operand} with {', '.join(ops)} give only "
                             f"{space}; lower them or widen the operand range")
        held_out = np.random.default_rng([seed, _EVAL_STREAM]).choice(space, size=2 * eval_samples, replace=False)
        if split == "train":
            excluded = set(held_out.tolist())
            drawn = np.random.default_rng([seed, _TRAIN_STREAM]).choice(
                space, size=n_samples + 2 * eval_samples, replace=False)
            problems = [ix for ix in drawn.tolist() if ix not in excluded][:n_samples]
        else:
            problems = held_out[:eval_samples] if split == "val" else held_out[eval_samples:]
        samples: List[Sample] = []
        for ix, problem in enumerate(problems):
            op_ix, pair = divmod(int(problem), width * width)
            a, b = min_operand + pair // width, min_operand + pair % width
            try:
                prompt = prompt_template.format(a=a, op=ops[op_ix], b=b)
            except (KeyError, IndexError, ValueError) as error:
                raise ValueError(f"datapool.args.prompt_template may use {{a}}, {{op}} and {{b}}; "
                                 f"{prompt_template!r} fails: {error!r}") from None
            answer = str(OPERATIONS[ops[op_ix]](a, b))
            samples.append(Sample(id=f"{split}_{ix}", prompt_or_input_text=prompt, references=[answer],
                                  meta_data={"answer": answer, "a": a, "op": ops[op_ix], "b": b}))
        return cls(samples)
