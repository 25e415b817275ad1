"""Bad situations a newcomer meets end in one clear line, an exit status and intact artifacts.

Unwritable or immutable results folders, a full disk while a checkpoint is written, a lowered
``n_iters``, an interrupted checkpoint pruning, a changed thread count on resume, metrics with
missing scores, unsafe (pickled) trainer states, ``--validate_only``, ``--help`` and custom modules
found beside the config.
"""
from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, List

import numpy as np
import pytest
import torch
import yaml

from conftest import REPO, write_custom_module_config, write_small_config
from rl4lms.cli import main
from rl4lms.training.checkpoint import STATE_FILE


def _run(config: Path, base: Path, name: str = "run", *extra: str) -> int:
    return main(["--config_path", str(config), "--base_path_to_store_results", str(base), "--experiment_name", name,
                 *extra])


def _error_line(err: str) -> str:
    """The command's own error line: the last line of stderr, with no traceback before it."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: "), err
    return lines[-1]


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != ".run.lock"}


@contextmanager
def _unwritable(folder: Path) -> Iterator[None]:
    """Make ``folder`` refuse writes: immutable (``chattr +i``) for root, read-only otherwise."""
    if os.geteuid() == 0:
        if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(folder)]).returncode != 0:
            pytest.skip("this filesystem cannot make a folder immutable (chattr +i)")
        try:
            yield
        finally:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
    else:
        folder.chmod(0o500)
        try:
            yield
        finally:
            folder.chmod(0o700)


def test_unwritable_results_folder_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = write_small_config(tmp_path, n_iters=2, eval_every=1, save_every=1)
    results = tmp_path / "results"
    results.mkdir()
    with _unwritable(results):
        assert _run(config, results) == 2
    line = _error_line(capsys.readouterr().err)
    assert f"cannot write run folder {results / 'run'}" in line
    assert "Operation not permitted" in line or "Permission denied" in line


@pytest.mark.slow
def test_run_folder_made_immutable_keeps_what_it_holds(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = write_small_config(tmp_path, n_iters=2, eval_every=1, save_every=1)
    assert _run(config, tmp_path) == 0
    before = _snapshot(tmp_path / "run")
    capsys.readouterr()
    with _unwritable(tmp_path / "run"):
        assert _run(config, tmp_path, "run", "--override", "train_evaluation.n_iters=3") == 2
    assert "cannot write" in _error_line(capsys.readouterr().err)
    assert _snapshot(tmp_path / "run") == before


@pytest.mark.slow
def test_full_disk_during_a_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture) -> None:
    """The second checkpoint's ``torch.save`` goes to /dev/full: torch's own write failure."""
    config = write_small_config(tmp_path, n_iters=4, eval_every=2, save_every=2)
    real_save = torch.save
    calls: List[Path] = []

    def save_to_full_disk(obj, path, *args, **kwargs):
        calls.append(Path(path))
        return real_save(obj, "/dev/full" if len(calls) == 2 else path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_to_full_disk)
    assert _run(config, tmp_path) == 2
    line = _error_line(capsys.readouterr().err)
    assert "cannot write folder" in line and "checkpoint_000004" in line and "inline_container" in line
    checkpoints = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["checkpoint_000002"]  # no half-written staging left
    assert torch.load(checkpoints / "checkpoint_000002" / STATE_FILE, weights_only=True)["iteration"] == 2
    monkeypatch.setattr(torch, "save", real_save)
    assert _run(config, tmp_path) == 0  # the rerun resumes from iteration 2
    rollouts = [json.loads(line)["iteration"] for line in (tmp_path / "run" / "rollout_info.jsonl").open()]
    assert rollouts == [1, 2, 3, 4]
    assert json.loads((tmp_path / "run" / "run_complete.json").read_text())["iterations"] == 4


@pytest.mark.slow
def test_lower_n_iters_than_the_folder_holds_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = write_small_config(tmp_path, n_iters=2, eval_every=1, save_every=1)
    assert _run(config, tmp_path) == 0
    run = tmp_path / "run"
    (run / "run_complete.json").unlink()  # as if killed after its last checkpoint
    before = _snapshot(run)
    capsys.readouterr()
    assert _run(config, tmp_path, "run", "--override", "train_evaluation.n_iters=1") == 2
    line = _error_line(capsys.readouterr().err)
    assert "train_evaluation.n_iters is 1" in line and "already holds 2 iterations" in line
    assert _snapshot(run) == before
    assert _run(config, tmp_path) == 0
    assert json.loads((run / "run_complete.json").read_text())["iterations"] == 2
    capsys.readouterr()
    assert _run(config, tmp_path, "run", "--override", "train_evaluation.n_iters=1") == 2  # a finished run too
    assert "already holds 2 iterations" in _error_line(capsys.readouterr().err)


@pytest.mark.slow
def test_resume_prunes_checkpoints_left_by_a_kill_during_pruning(tmp_path: Path) -> None:
    config = write_small_config(tmp_path, n_iters=3, eval_every=1, save_every=1)
    assert _run(config, tmp_path) == 0
    run = tmp_path / "run"
    checkpoints = run / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["checkpoint_000002", "checkpoint_000003"]
    # A kill after checkpoint 3's rename and before the pruning leaves checkpoint 1, plus a staging leftover.
    shutil.copytree(checkpoints / "checkpoint_000002", checkpoints / "checkpoint_000001")
    (checkpoints / ".staging_checkpoint_000004").mkdir()
    (run / "run_complete.json").unlink()
    assert _run(config, tmp_path) == 0  # resumes at 3: no new save, the resume itself prunes
    assert sorted(p.name for p in checkpoints.iterdir()) == ["checkpoint_000002", "checkpoint_000003"]


@pytest.fixture
def restore_threads() -> Iterator[None]:
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_thread_count_is_recorded_and_a_changed_one_warned(tmp_path: Path, restore_threads: None) -> None:
    config = write_small_config(tmp_path, n_iters=1, eval_every=1, save_every=1)
    assert _run(config, tmp_path, "run", "--num_threads", "1") == 0
    run = tmp_path / "run"
    sessions = json.loads((run / "environment.json").read_text())["sessions"]
    assert [s["torch_num_threads"] for s in sessions] == [1]
    assert sessions[0]["torch"] == torch.__version__
    assert _run(config, tmp_path, "run", "--num_threads", "2", "--override", "train_evaluation.n_iters=2") == 0
    sessions = json.loads((run / "environment.json").read_text())["sessions"]
    assert [s["torch_num_threads"] for s in sessions] == [1, 2]
    assert "started with 1 torch threads and continues with 2" in (run / "log.txt").read_text()


def test_metric_with_missing_per_sample_scores_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture) -> None:
    source = ("from rl4lms.metrics.base import BaseMetric\n"
              "from rl4lms.registry import MetricRegistry\n\n"
              "@MetricRegistry.register('short_metric')\n"
              "class ShortMetric(BaseMetric):\n"
              "    def compute(self, prompts, gens, refs, metas=None, model=None, split_name=None):\n"
              "        return {'custom/short': ([1.0] * (len(gens) - 1), 1.0)}\n")
    path = write_custom_module_config(
        tmp_path, monkeypatch, "rl4lms_short_metric", source,
        lambda c: c["train_evaluation"]["metrics"].append({"id": "short_metric"}), "short.yml", n_iters=1)
    assert _run(path, tmp_path) == 1
    line = _error_line(capsys.readouterr().err)
    assert "metric ShortMetric returned 7 per-sample scores for 'custom/short' on the 8 samples" in line
    assert not list((tmp_path / "run").glob("epoch_*_predictions.json"))


@pytest.mark.slow
def test_trainer_state_loads_with_weights_only_and_old_pickles_are_refused(tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture) -> None:
    config = write_small_config(tmp_path, n_iters=2, eval_every=1, save_every=1)
    assert _run(config, tmp_path) == 0
    state_path = tmp_path / "run" / "checkpoints" / "checkpoint_000002" / STATE_FILE
    state = torch.load(state_path, weights_only=True)
    assert state["iteration"] == 2 and isinstance(state["rng"]["numpy"]["keys"], list)
    # The format before: numpy's RNG state as an array, which only a full unpickler can rebuild.
    state["rng"]["numpy"] = np.random.get_state()
    torch.save(state, state_path)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(state_path, weights_only=True)
    (tmp_path / "run" / "run_complete.json").unlink()
    capsys.readouterr()
    assert _run(config, tmp_path, "run", "--override", "train_evaluation.n_iters=3") == 2
    line = _error_line(capsys.readouterr().err)
    assert "pickle format of an older rl4lms" in line and "is not read" in line


def test_validate_only_loads_no_model(tmp_path: Path, capsys: pytest.CaptureFixture,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import rl4lms.cli

    def no_training(*args, **kwargs):
        raise AssertionError("--validate_only must not build the run")

    monkeypatch.setattr(rl4lms.cli, "train", no_training)
    config = write_small_config(tmp_path)
    assert _run(config, tmp_path, "run", "--validate_only") == 0
    assert "valid (alg ppo" in capsys.readouterr().out
    assert not (tmp_path / "run").exists()
    assert _run(config, tmp_path, "run", "--validate_only", "--override", "alg.args.learning_rate=0") == 2
    assert _error_line(capsys.readouterr().err).endswith("alg.args.learning_rate: must be > 0, got 0")


def test_help_does_not_import_torch() -> None:
    code = ("import sys\nfrom rl4lms.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('torch imported' if 'torch' in sys.modules else 'no torch')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=dict(os.environ, PYTHONPATH=str(REPO))).stdout
    assert "--validate_only" in out and out.strip().endswith("no torch")


@pytest.fixture
def clean_import_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(sys, "modules", dict(sys.modules))


@pytest.mark.parametrize("where", ["working folder", "config folder"])
def test_custom_modules_are_found_beside_the_config_or_in_the_working_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, clean_import_path: None,
        where: str) -> None:
    project = tmp_path / "project"
    (project / "rl4lms_user_pkg").mkdir(parents=True)
    (project / "rl4lms_user_pkg" / "__init__.py").write_text("")
    (project / "rl4lms_user_pkg" / "components.py").write_text(
        "from rl4lms.registry import RewardFunctionRegistry\n"
        "from rl4lms.rewards.synthetic import IncreasingNumbersReward\n\n"
        "RewardFunctionRegistry.register('user_pkg_reward', IncreasingNumbersReward)\n")
    config = yaml.safe_load(write_small_config(tmp_path).read_text())
    config["custom_modules"] = ["rl4lms_user_pkg.components"]
    config["reward_fn"]["id"] = "user_pkg_reward"
    path = project / "configs" / "my.yml" if where == "working folder" else project / "my.yml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(yaml.safe_dump(config))
    monkeypatch.chdir(project if where == "working folder" else tmp_path)
    assert main(["--config_path", str(path), "--validate_only"]) == 0, capsys.readouterr().err
