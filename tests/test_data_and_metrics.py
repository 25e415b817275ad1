"""Synthetic data pools, TextGenPool, and the synthetic rewards and metrics (hand-computed values)."""
from __future__ import annotations

from typing import Any, List

import numpy as np
import pytest

from rl4lms.data_pools.synthetic import _DATE_PROMPTS, DatesPool, DummyPool, IncreasingNumbersPool
from rl4lms.data_pools.text_gen_pool import Sample, TextGenPool
from rl4lms.errors import EmptyDataPoolError
from rl4lms.metrics.synthetic import DateInText, IncreasingNumbersInText
from rl4lms.registry import DataPoolRegistry, MetricRegistry, RewardFunctionRegistry
from rl4lms.rewards.synthetic import IncreasingNumbersReward, SentencesWithDatesReward
from rl4lms.scoring.synthetic import contains_iso_date, increasing_numbers_score


def _prompts(pool: TextGenPool) -> List[str]:
    return [s.prompt_or_input_text for s in pool]


# --- pools -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("pool_cls, args", [
    (IncreasingNumbersPool, {}),
    (DatesPool, {}),
    (DummyPool, {"prompt": "count:"}),
])
def test_pool_sizes_and_ids(pool_cls: Any, args: dict) -> None:
    for split in ("train", "val", "test"):
        pool = pool_cls.prepare(split=split, n_samples=7, **args)
        assert isinstance(pool, pool_cls)
        assert len(pool) == 7
        assert [s.id for s in pool] == [f"{split}_{i}" for i in range(7)]
        assert all(isinstance(s, Sample) for s in pool)
    assert len(pool_cls.prepare(split="train", **args)) == 100  # default n_samples


@pytest.mark.parametrize("pool_cls", [IncreasingNumbersPool, DatesPool])
def test_pools_deterministic_per_split_and_different_across_splits(pool_cls: Any) -> None:
    train_a = pool_cls.prepare(split="train", n_samples=30)
    train_b = pool_cls.prepare(split="train", n_samples=30)
    assert [(s.prompt_or_input_text, s.references) for s in train_a] == \
           [(s.prompt_or_input_text, s.references) for s in train_b]
    val = pool_cls.prepare(split="val", n_samples=30)
    test = pool_cls.prepare(split="test", n_samples=30)
    refs = {split: [s.references[0] for s in pool] for split, pool in
            (("train", train_a), ("val", val), ("test", test))}
    assert refs["train"] != refs["val"]
    assert refs["train"] != refs["test"]
    assert refs["val"] != refs["test"]
    # A different seed gives a different train split.
    other = pool_cls.prepare(split="train", n_samples=30, seed=1)
    assert [s.references[0] for s in other] != refs["train"]


def test_increasing_numbers_references_continue_prompt() -> None:
    pool = IncreasingNumbersPool.prepare(split="train", n_samples=40, prompt_numbers=2, reference_numbers=5)
    for sample in pool:
        prompt = [int(x) for x in sample.prompt_or_input_text.split()]
        assert len(sample.references) == 1
        reference = [int(x) for x in sample.references[0].split()]
        assert len(prompt) == 2 and len(reference) == 5
        numbers = prompt + reference
        # strictly increasing, with steps in [1, 9], continuing after the prompt
        steps = [b - a for a, b in zip(numbers, numbers[1:])]
        assert all(1 <= step <= 9 for step in steps), numbers
        # The reference alone is a perfect increasing run: score = 5 / max(5, 10 / 2) = 1.0
        assert increasing_numbers_score(sample.references[0], 10) == 1.0


def test_increasing_numbers_default_shapes() -> None:
    sample = IncreasingNumbersPool.prepare(split="val", n_samples=1)[0]
    assert len(sample.prompt_or_input_text.split()) == 1
    assert len(sample.references[0].split()) == 8
    assert int(sample.references[0].split()[0]) > int(sample.prompt_or_input_text)


def test_dates_pool_references() -> None:
    pool = DatesPool.prepare(split="test", n_samples=25)
    for sample in pool:
        assert sample.prompt_or_input_text in _DATE_PROMPTS
        (reference,) = sample.references
        assert reference.startswith(sample.prompt_or_input_text + " ")
        assert reference.endswith(".")
        assert contains_iso_date(reference) == 1.0
        date = reference[len(sample.prompt_or_input_text) + 1:-1]
        year, month, day = (int(x) for x in date.split("-"))
        assert 1990 <= year <= 2031 and 1 <= month <= 12 and 1 <= day <= 31


def test_dummy_pool_repeats_prompt_without_references() -> None:
    pool = DummyPool.prepare(split="val", prompt="Hello", n_samples=3)
    assert _prompts(pool) == ["Hello"] * 3
    assert [s.references for s in pool] == [[], [], []]


@pytest.mark.parametrize("pool_cls, args", [
    (IncreasingNumbersPool, {}),
    (DatesPool, {}),
    (DummyPool, {"prompt": "x"}),
])
def test_bad_split_and_count_raise(pool_cls: Any, args: dict) -> None:
    with pytest.raises(ValueError, match="unknown split 'training'"):
        pool_cls.prepare(split="training", **args)
    with pytest.raises(ValueError, match="n_samples must be at least 1"):
        pool_cls.prepare(split="train", n_samples=0, **args)
    with pytest.raises(ValueError):
        pool_cls.prepare(split="train", n_samples=-3, **args)


def test_pools_built_through_registry() -> None:
    pool = DataPoolRegistry.get("increasing_numbers").prepare(split="train", n_samples=4)
    assert isinstance(pool, IncreasingNumbersPool) and len(pool) == 4
    assert isinstance(DataPoolRegistry.get("dates").prepare(split="val", n_samples=2), DatesPool)
    assert isinstance(DataPoolRegistry.get("dummy_pool").prepare(split="val", prompt="p", n_samples=2), DummyPool)


# --- TextGenPool -------------------------------------------------------------------------------------

def _pool(n: int) -> TextGenPool:
    return TextGenPool([Sample(id=str(i), prompt_or_input_text=f"p{i}") for i in range(n)])


def test_text_gen_pool_indexing_and_iteration() -> None:
    pool = _pool(3)
    assert len(pool) == 3
    assert pool[1].id == "1"
    assert [s.id for s in pool] == ["0", "1", "2"]


def test_text_gen_pool_split() -> None:
    parts = _pool(8).split([0.5, 0.25, 0.25])
    assert [[s.id for s in part] for part in parts] == [["0", "1", "2", "3"], ["4", "5"], ["6", "7"]]
    # 10 samples in thirds: edges round(0, 3.33, 6.67, 10) = 0, 3, 7, 10 -> sizes 3, 4, 3
    thirds = _pool(10).split([1 / 3, 1 / 3, 1 / 3])
    assert [len(p) for p in thirds] == [3, 4, 3]
    assert [s.id for p in thirds for s in p] == [str(i) for i in range(10)]


def test_text_gen_pool_split_keeps_subclass() -> None:
    parts = IncreasingNumbersPool.prepare(split="train", n_samples=4).split([0.5, 0.5])
    assert all(type(p) is IncreasingNumbersPool for p in parts)
    assert [len(p) for p in parts] == [2, 2]


def test_text_gen_pool_split_bad_ratios() -> None:
    with pytest.raises(ValueError, match="sum to 1"):
        _pool(4).split([0.5, 0.4])


def test_text_gen_pool_sample() -> None:
    pool = _pool(5)
    a = [pool.sample(np.random.default_rng(3)).id for _ in range(3)]
    rng = np.random.default_rng(3)
    assert pool.sample(rng).id == a[0]
    drawn = {pool.sample(rng).id for _ in range(200)}
    assert drawn == {"0", "1", "2", "3", "4"}
    with pytest.raises(EmptyDataPoolError):
        _pool(0).sample(np.random.default_rng(0))


def test_base_prepare_not_implemented() -> None:
    with pytest.raises(NotImplementedError):
        TextGenPool.prepare("train")


# --- scoring functions ---------------------------------------------------------------------------------

@pytest.mark.parametrize("text, min_tokens, expected", [
    # 4 words, numbers 1 < 2 < 3 -> run 3; denominator max(4, 2 / 2) = 4 -> 0.75
    ("1 2 3 foo", 2, 0.75),
    # same run, denominator max(4, 20 / 2) = 10 -> 0.3
    ("1 2 3 foo", 20, 0.3),
    # perfect run of 4: denominator max(4, 3 / 2) = 4 -> 1.0 ; with min_tokens 10: 4 / 5 = 0.8
    ("1 2 3 4", 3, 1.0),
    ("1 2 3 4", 10, 0.8),
    # run starts at the first number and stops at the first non-increase: 5 then 3 -> run 1 -> 1/3
    ("5 3 4", 2, 1 / 3),
    # equal numbers are not increasing -> run 1 -> 1/3
    ("1 1 2", 2, 1 / 3),
    # words between numbers are skipped for the run but counted in the length: run 3 over 6 words
    ("a 1 b 2 c 3", 2, 0.5),
    # decimals and negatives parse: 1.5 < 2, then -1 stops -> run 2 over 3 words
    ("1.5 2 -1", 2, 2 / 3),
    # a single number: run 1, denominator max(1, 10 / 2) = 5 -> 0.2
    ("7", 10, 0.2),
    # no numbers at all
    ("foo bar", 2, 0.0),
    ("", 2, 0.0),
])
def test_increasing_numbers_score_hand_examples(text: str, min_tokens: int, expected: float) -> None:
    assert increasing_numbers_score(text, min_tokens) == pytest.approx(expected, abs=1e-12)


def test_increasing_numbers_score_nan_is_not_increasing() -> None:
    # numbers [nan, nan, nan, nan]: nan > nan is False -> run 1 ; 4 words -> 1 / max(4, 1) = 0.25
    assert increasing_numbers_score("nan nan nan nan", 2) == pytest.approx(0.25)
    # numbers [1, nan, 2]: nan > 1 is False -> run 1 -> 1/3
    assert increasing_numbers_score("1 nan 2", 2) == pytest.approx(1 / 3)


@pytest.mark.parametrize("text, expected", [
    ("We met on 2021-03-04.", 1.0),
    ("2021-03-04", 1.0),
    ("posted 1999-12-31 and 2000-01-01", 1.0),
    ("We met on 2021-3-4.", 0.0),
    ("20210304", 0.0),
    ("March 4, 2021", 0.0),
    ("", 0.0),
])
def test_contains_iso_date(text: str, expected: float) -> None:
    assert contains_iso_date(text) == expected


def test_increasing_numbers_reward() -> None:
    reward = IncreasingNumbersReward(min_tokens=2)
    scores = reward(["p", "p", "p"], ["1 2 3 foo", "1 2 3 foo", "x"], [[], [], []], [True, False, True])
    # finished: 0.75 (see above) ; not finished: 0 ; no numbers: 0
    assert scores == pytest.approx([0.75, 0.0, 0.0])
    assert IncreasingNumbersReward().min_tokens == 20
    with pytest.raises(ValueError, match="min_tokens"):
        IncreasingNumbersReward(min_tokens=0)


def test_sentences_with_dates_reward() -> None:
    reward = SentencesWithDatesReward()
    scores = reward(["a", "b", "c"], ["on 2020-01-02.", "on 2020-01-02.", "soon"], [[], [], []], [True, False, True])
    assert scores == [1.0, 0.0, 0.0]


def test_rewards_and_metrics_registered_under_ids() -> None:
    assert RewardFunctionRegistry.get("increasing_numbers") is IncreasingNumbersReward
    assert RewardFunctionRegistry.get("sentences_with_dates") is SentencesWithDatesReward
    assert MetricRegistry.get("increasing_numbers") is IncreasingNumbersInText
    assert MetricRegistry.get("dates") is DateInText


def test_increasing_numbers_metric_compute() -> None:
    metric = MetricRegistry.build("increasing_numbers", {"min_tokens": 2})
    result = metric.compute(["p"] * 3, ["1 2 3 foo", "foo", "5 3 4"], [[], [], []])
    assert set(result) == {"synthetic/increasing_numbers_in_text"}
    per_sample, corpus = result["synthetic/increasing_numbers_in_text"]
    # [0.75, 0.0, 1/3] -> mean (0.75 + 0 + 0.333...) / 3 = 0.36111...
    assert per_sample == pytest.approx([0.75, 0.0, 1 / 3])
    assert corpus == pytest.approx((0.75 + 1 / 3) / 3)
    assert isinstance(corpus, float)


def test_date_metric_compute() -> None:
    metric = DateInText()
    result = metric.compute(["a", "b", "c", "d"], ["x 2020-01-02", "none", "1999-09-09.", "9-9-99"],
                            [[], [], [], []], split_name="val")
    assert result == {"synthetic/dates_in_text": ([1.0, 0.0, 1.0, 0.0], 0.5)}


def test_metric_compute_on_empty_split() -> None:
    assert DateInText().compute([], [], []) == {"synthetic/dates_in_text": ([], 0.0)}
    assert IncreasingNumbersInText().compute([], [], []) == {"synthetic/increasing_numbers_in_text": ([], 0.0)}


@pytest.mark.parametrize("ratios", [[0.5, 0.4], [1.5, -0.5]])
def test_split_rejects_bad_ratios(ratios: List[float]) -> None:
    pool = TextGenPool([Sample(id=str(i), prompt_or_input_text="p") for i in range(4)])
    with pytest.raises(ValueError, match="non-negative and sum to 1"):
        pool.split(ratios)
