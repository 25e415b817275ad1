"""The pieces of scripts/compat/trl_tests.py that need no TRL checkout: the ``parameterized`` stand-in,
the JUnit report reader and the comparison table."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts" / "compat"))
import trl_tests  # noqa: E402  (a script folder, not a package)


def test_parameterized_expand_makes_one_named_method_per_case() -> None:
    class Cases:
        @trl_tests.parameterized.expand([("gpt2", 1), ("t5-small", 2)])
        def test_size(self, name: str, size: int) -> int:
            return size * 10

    assert Cases().test_size_0_gpt2() == 10 and Cases().test_size_1_t5_small() == 20
    assert getattr(Cases, "test_size") is None  # only the expanded methods are collected


def test_junit_report_gives_each_tests_outcome_and_first_error_line(tmp_path: Path) -> None:
    report = tmp_path / "r.xml"
    report.write_text(
        '<testsuites><testsuite>'
        '<testcase classname="tests.test_core.CoreTester" name="test_a"/>'
        '<testcase classname="tests.test_core.CoreTester" name="test_b">'
        '<failure message="AssertionError: 1 != 2&#10;more">trace</failure></testcase>'
        '<testcase classname="tests.test_core.CoreTester" name="test_c"><skipped message="no GPU"/></testcase>'
        '</testsuite></testsuites>')
    outcomes, messages = trl_tests.junit_outcomes(report)
    assert outcomes == {"test_core::CoreTester::test_a": "passed", "test_core::CoreTester::test_b": "failed",
                        "test_core::CoreTester::test_c": "skipped"}
    assert messages == {"test_core::CoreTester::test_b": "AssertionError: 1 != 2"}


def test_the_table_counts_per_file_and_names_what_passes_on_one_side_only() -> None:
    ours = trl_tests.SideResult("rl4lms.trl", "python", {"test_core::T::a": "passed", "test_core::T::b": "failed",
                                                         "test_core::T::c": "passed"},
                                {"test_core::T::b": "ValueError: boom"}, timed_out=["test_ppo_trainer.py"])
    trl = trl_tests.SideResult("trl", "python", {"test_core::T::a": "passed", "test_core::T::b": "passed",
                                                 "test_core::T::c": "skipped"})
    table = trl_tests.markdown([ours, trl], ["fsmt"])
    assert "| `test_core.py` | 2 / 1 / 0 | 2 / 0 / 1 |" in table
    assert "| `test_ppo_trainer.py` | timed out | 0 / 0 / 0 |" in table
    assert "- `test_core::T::b`: ValueError: boom" in table
    assert "- `test_core::T::c`: skipped" in table
    assert "as T5 on both sides (missing from one side's transformers): fsmt" in table


@pytest.mark.parametrize("name", [name for name in trl_tests.STAND_INS if trl_tests.STAND_INS[name].head != "seq2seq"
                                  and trl_tests.STAND_INS[name].tokenizer == "tiny"][:3])
def test_stand_ins_build_with_this_transformers(name: str) -> None:
    from rl4lms.models.tiny import build_tokenizer

    recipe = trl_tests.STAND_INS[name]
    model = trl_tests.build_stand_in(recipe, build_tokenizer())
    assert model.config.model_type == recipe.model_type
    assert hasattr(model, "lm_head") == (recipe.head == "causal")
