"""Verifiable-reward tasks: the synthetic arithmetic and GSM8K pools, final-answer extraction, and the
``exact_match_answer`` reward and metric (hand-computed values); their configs run with ``--smoke``."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, List

import pytest

from conftest import REPO
from rl4lms.cli import main
from rl4lms.data_pools.gsm8k import GSM8K
from rl4lms.data_pools.sources import load_rows
from rl4lms.data_pools.synthetic import SyntheticArithmeticPool
from rl4lms.errors import DataSourceError
from rl4lms.metrics.final_answer import ExactMatchAnswerMetric
from rl4lms.scoring.answers import extract_answer
from rl4lms.registry import DataPoolRegistry, MetricRegistry, RewardFunctionRegistry
from rl4lms.rewards.final_answer import ExactMatchAnswerReward


def _prompts(pool) -> List[str]:
    return [s.prompt_or_input_text for s in pool]


# --- synthetic_arithmetic ----------------------------------------------------------------------------

def test_arithmetic_splits_have_their_sizes_and_the_answer() -> None:
    sizes = {"train": 30, "val": 7, "test": 7}
    for split, size in sizes.items():
        pool = SyntheticArithmeticPool.prepare(split, n_samples=30, eval_samples=7, operations=["+", "-", "*"],
                                               min_operand=2, max_operand=12)
        assert len(pool) == size and [s.id for s in pool] == [f"{split}_{i}" for i in range(size)]
        for sample in pool:
            a, op, b = sample.meta_data["a"], sample.meta_data["op"], sample.meta_data["b"]
            assert 2 <= a <= 12 and 2 <= b <= 12 and sample.prompt_or_input_text == f"{a}{op}{b}="
            assert sample.meta_data["answer"] == str(eval(f"{a}{op}{b}"))  # noqa: S307 (our own digits)
            assert sample.references == [sample.meta_data["answer"]]


def test_arithmetic_splits_are_disjoint_even_when_they_cover_every_problem() -> None:
    # 0..9 with "+" has exactly 100 problems: 80 + 10 + 10 uses each one once.
    splits = {split: _prompts(SyntheticArithmeticPool.prepare(split)) for split in ("train", "val", "test")}
    assert [len(splits[s]) for s in ("train", "val", "test")] == [80, 10, 10]
    everything = splits["train"] + splits["val"] + splits["test"]
    assert len(set(everything)) == 100
    assert set(everything) == {f"{a}+{b}=" for a in range(10) for b in range(10)}
    with pytest.raises(ValueError, match="n_samples \\+ 2 x eval_samples = 101 distinct problems, but operands "
                                         "0..9 with \\+ give only 100"):
        SyntheticArithmeticPool.prepare("train", n_samples=81)


def test_arithmetic_is_deterministic_by_seed_and_keeps_held_out_problems_when_train_grows() -> None:
    args = {"operations": "*", "min_operand": 10, "max_operand": 99, "eval_samples": 20}
    train = _prompts(SyntheticArithmeticPool.prepare("train", n_samples=200, **args))
    assert train == _prompts(SyntheticArithmeticPool.prepare("train", n_samples=200, **args))
    assert train != _prompts(SyntheticArithmeticPool.prepare("train", n_samples=200, seed=1, **args))
    assert len(set(train)) == 200
    test = _prompts(SyntheticArithmeticPool.prepare("test", n_samples=200, **args))
    bigger = {"train": SyntheticArithmeticPool.prepare("train", n_samples=2000, **args),
              "test": SyntheticArithmeticPool.prepare("test", n_samples=2000, **args)}
    assert _prompts(bigger["test"]) == test  # val and test do not depend on n_samples
    assert not set(_prompts(bigger["train"])) & set(test)


def test_arithmetic_prompt_template_and_bad_arguments() -> None:
    sample = SyntheticArithmeticPool.prepare("val", prompt_template="What is {a} {op} {b}? ", operations="-",
                                             eval_samples=3, n_samples=3)[0]
    a, b = sample.meta_data["a"], sample.meta_data["b"]
    assert sample.prompt_or_input_text == f"What is {a} - {b}? " and sample.meta_data["answer"] == str(a - b)
    with pytest.raises(ValueError, match="operations: expected one of \\+, -, \\* or a list of distinct ones, got '/'"):
        SyntheticArithmeticPool.prepare("train", operations="/")
    with pytest.raises(ValueError, match="prompt_template may use \\{a\\}, \\{op\\} and \\{b\\}"):
        SyntheticArithmeticPool.prepare("train", prompt_template="{x}=")
    with pytest.raises(ValueError, match="max_operand \\(1\\) is below min_operand \\(5\\)"):
        SyntheticArithmeticPool.prepare("train", min_operand=5, max_operand=1)
    with pytest.raises(ValueError, match="eval_samples must be at least 1"):
        SyntheticArithmeticPool.prepare("test", eval_samples=0)
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        SyntheticArithmeticPool.prepare("dev")


# --- final-answer extraction ---------------------------------------------------------------------------

@pytest.mark.parametrize("text, steps, expected", [
    ("#### 1,234", ["marker"], "1234"),
    ("so she has 7 left.\n#### -7", ["marker"], "-7"),
    ("The total is $1,200.50.\n####  $1,200.50", ["marker"], "1200.5"),
    ("#### 42\n\nQuestion: next one?\nAnswer: 5 + 6 = 11\n#### 11", ["marker"], "42"),  # the first marker
    ("#### 4.0", ["marker"], "4"),
    ("#### +0", ["marker"], "0"),
    ("#### -0.0", ["marker"], "0"),
    ("she has 3 apples and 12 pears", ["marker"], None),
    ("she has 3 apples and 12 pears", ["marker", "last_number"], "12"),
    ("she has 3 apples and 12 pears", ["first_number"], "3"),
    ("10-3=7", ["first_number"], "10"),  # a minus right after a digit is an operator
    ("10-3=7", ["last_number"], "7"),
    ("it is -3 now", ["last_number"], "-3"),
    ("1,2345", ["first_number"], "1"),  # not a thousands group
    ("no number here", ["marker", "first_number", "last_number", "whole"], None),
    (" 8 ", ["whole"], "8"),
    ("8.", ["whole"], "8"),
    ("+1,200.50", ["whole"], "1200.5"),
    ("8 apples", ["whole"], None),
    ("", ["whole"], None),
])
def test_extract_answer(text: str, steps: List[str], expected: str) -> None:
    assert extract_answer(text, steps) == expected


def test_metric_compares_numbers_by_value() -> None:
    metric = ExactMatchAnswerMetric(extraction=["marker", "last_number"])
    gens = ["2+2 is 4.\n#### 4.00", "I think 5", "#### 1,080", "no idea", "#### 16"]
    metas = [{"answer": "4"}, {"answer": "6"}, {"answer": "1080"}, {"answer": "3"}, {"answer": "seventeen"}]
    result = metric.compute([""] * 5, gens, [[]] * 5, metas)
    assert result == {"answer/exact_match": ([1.0, 0.0, 1.0, 0.0, 0.0], 0.4),
                      "answer/found": ([1.0, 1.0, 1.0, 0.0, 1.0], 0.8)}


def test_without_an_answer_key_the_references_are_read_with_the_same_extraction() -> None:
    metric = ExactMatchAnswerMetric(extraction="marker", answer_key="solution")
    refs = [["3+4=7\n#### 7"], ["#### 8", "#### 9"], ["no marker"]]
    scores = metric.sentence_scores([""] * 3, ["#### 7", "#### 9", "#### 1"], refs, [{"answer": "1"}] * 3)
    assert scores == [1.0, 1.0, 0.0]
    assert ExactMatchAnswerMetric().compute([], [], [], []) == {"answer/exact_match": ([], 0.0),
                                                                "answer/found": ([], 0.0)}


def test_reward_gives_format_credit_only_below_a_right_answer() -> None:
    reward = ExactMatchAnswerReward(extraction="whole", format_reward=0.1)
    gens = ["8", "9", "8 apples", "8"]
    metas = [{"answer": "8"}, {"answer": "8"}, {"answer": "8"}, {"answer": "8"}]
    assert reward(["3+5="] * 4, gens, [["8"]] * 4, [True, True, True, False], metas) == [1.0, 0.1, 0.0, 0.0]
    assert ExactMatchAnswerReward()(["3+5="], ["9"], [["8"]], [True], [{"answer": "8"}]) == [0.0]
    with pytest.raises(ValueError, match="format_reward must be in \\[0, 1\\)"):
        ExactMatchAnswerReward(format_reward=1.0)
    with pytest.raises(ValueError, match="extraction: expected one of whole, marker, first_number, last_number"):
        ExactMatchAnswerReward(extraction=["marker", "final"])


@pytest.mark.parametrize("registry, component_id, cls", [
    (RewardFunctionRegistry, "exact_match_answer", ExactMatchAnswerReward),
    (MetricRegistry, "exact_match_answer", ExactMatchAnswerMetric),
    (DataPoolRegistry, "synthetic_arithmetic", SyntheticArithmeticPool),
    (DataPoolRegistry, "gsm8k", GSM8K),
])
def test_the_verifiable_components_are_registered(registry: Any, component_id: str, cls: type) -> None:
    assert registry.get(component_id) is cls


# --- gsm8k -----------------------------------------------------------------------------------------------

def test_gsm8k_fixture_parsing() -> None:
    rows = load_rows("gsm8k", "unused", None, "test", fixture=True)
    test = GSM8K.prepare("test", fixture=True)
    assert len(test) == len(rows) == 12
    sample = test[6]
    assert sample.prompt_or_input_text == f"Question: {rows[6]['question']}\nAnswer:"
    assert sample.references == [rows[6]["answer"]] and rows[6]["answer"].endswith("#### 1,080")
    assert sample.meta_data == {"answer": "1080"}
    assert [s.meta_data["answer"] for s in test][9] == "-23"
    stripped = GSM8K.prepare("test", fixture=True, remove_calculator_annotations=True)[6].references[0]
    assert stripped == "It leaks 35*12 = 420 liters.\n1500-420 = 1080 liters are left.\n#### 1,080"
    custom = GSM8K.prepare("test", fixture=True, prompt_template="Solve: {question}\nEnd with '#### <number>'.\n")
    assert custom[0].prompt_or_input_text == f"Solve: {rows[0]['question']}\nEnd with '#### <number>'.\n"


def test_gsm8k_validation_is_a_seeded_share_of_train() -> None:
    rows = load_rows("gsm8k", "unused", None, "train", fixture=True)
    train, val = GSM8K.prepare("train", fixture=True), GSM8K.prepare("val", fixture=True)
    assert len(val) == int(len(rows) * 0.1) == 2 and len(train) == len(rows) - 2
    assert sorted(_prompts(train) + _prompts(val)) == sorted(f"Question: {r['question']}\nAnswer:" for r in rows)
    kept = [f"Question: {r['question']}\nAnswer:" for r in rows]
    assert _prompts(train) == [p for p in kept if p in set(_prompts(train))]  # the data set's order
    assert _prompts(val) == _prompts(GSM8K.prepare("val", fixture=True))
    assert _prompts(GSM8K.prepare("val", fixture=True, seed=0)) != _prompts(val)
    assert len(GSM8K.prepare("val", fixture=True, val_ratio=0.5)) == 10
    with pytest.raises(ValueError, match="val_ratio must be between 0 and 1"):
        GSM8K.prepare("val", fixture=True, val_ratio=1.0)
    with pytest.raises(ValueError, match="prompt_template must contain \\{question\\}"):
        GSM8K.prepare("test", fixture=True, prompt_template="Q: {q}")


def test_gsm8k_rejects_a_solution_without_final_answer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "gsm8k").mkdir()
    (tmp_path / "gsm8k" / "test.jsonl").write_text(json.dumps({"question": "q?", "answer": "It is 5."}) + "\n")
    monkeypatch.setattr("rl4lms.data_pools.sources.FIXTURES_DIR", tmp_path)
    with pytest.raises(ValueError, match="openai/gsm8k test row 0: the solution has no '#### <number>' line"):
        GSM8K.prepare("test", fixture=True)


def test_gsm8k_offline_points_at_the_fixture(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DataSourceError, match="(?s)datapool 'gsm8k': could not load 'openai/gsm8k' \\(config 'main'\\)"
                                              ".*fixture: true"):
        GSM8K.prepare("train")


# --- configs ---------------------------------------------------------------------------------------------

VERIFIABLE_CONFIGS = sorted([*(REPO / "task_configs" / "synthetic_arithmetic").glob("*.yml"),
                             *(REPO / "task_configs" / "gsm8k").glob("*.yml")])


def test_there_are_configs_for_both_tasks() -> None:
    assert {p.parent.name for p in VERIFIABLE_CONFIGS} == {"synthetic_arithmetic", "gsm8k"}


def vllm_marked(paths: list) -> list:
    """``paths`` as pytest parameters, those whose rollouts use the vLLM engine marked ``vllm``."""
    return [pytest.param(p, marks=pytest.mark.vllm) if "generation_engine: vllm" in p.read_text() else p for p in paths]


@pytest.mark.parametrize("path", vllm_marked(VERIFIABLE_CONFIGS), ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_smoke_run_reports_the_exact_match(path: Path, tmp_path: Path) -> None:
    assert main(["--config_path", str(path), "--smoke", "--base_path_to_store_results", str(tmp_path)]) == 0
    complete = json.loads((tmp_path / f"{path.parent.name}_{path.stem}_smoke" / "run_complete.json").read_text())
    assert {"answer/exact_match", "answer/found"} <= set(complete["test"]["after"])
