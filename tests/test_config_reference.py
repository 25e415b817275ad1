"""The generated config reference: current, and printed by ``--describe`` without torch."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from rl4lms.config.reference import describe, reference
from rl4lms.errors import DescribeError

PAGE = Path(__file__).resolve().parents[1] / "docs" / "config_reference.md"


def test_the_docs_page_is_current() -> None:
    assert PAGE.read_text() == reference(), \
        "docs/config_reference.md is stale: python -m rl4lms.config.reference > docs/config_reference.md"


def test_describe_reads_docstrings_without_importing_torch() -> None:
    code = ("import sys; from rl4lms.cli import main; rc = main(['--describe', 'alg.args']); "
            "print('torch' in sys.modules, rc, file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stderr.strip() == "False 0"
    assert "### `ppo` (alg)" in done.stdout and "clip_range: the ratio clip" in done.stdout
    assert "num_generations: completions sampled per prompt" in done.stdout  # GRPO's __doc__ + SHARED_ARGS


def test_describe_targets() -> None:
    env = describe("env.args")
    assert env.startswith("## `env.args`") and "| `chat_template` | bool | `False` |" in env
    assert "- `rouge`:" in describe("train_evaluation.metrics")
    assert [line for line in describe("rouge").splitlines() if line.startswith("### ")] == [
        "### `rouge` (reward_fn)", "### `rouge` (metric)"]
    assert "| `seed` | int | `0` |" in describe("seed")
    assert "### `synthetic_arithmetic` (datapool)" in describe("datapool.args")
    with pytest.raises(DescribeError, match="'nope' is neither a config key path .* nor a component id"):
        describe("nope")


def test_describe_on_the_command_line(capsys: pytest.CaptureFixture) -> None:
    from rl4lms.cli import main

    assert main(["--describe", "nope"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert main([]) == 2
    assert "--config_path is required" in capsys.readouterr().err
