"""Sweeps: grid expansion, kill + rerun completes every run exactly once, one trainer per run folder."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import REPO, write_small_config
from rl4lms.cli import EXIT_RUN_LOCKED, main
from rl4lms.config import ConfigError
from rl4lms.sweep.grid import load_sweep
from rl4lms.training.run_lock import RunLock

SWEEP_SCRIPT = REPO / "scripts" / "sweep.py"


def _write_sweep(folder: Path, configs: list, grid: dict, overrides: dict) -> Path:
    path = folder / "sweep.yml"
    path.write_text(yaml.safe_dump({"name": "t", "base_path_to_store_results": str(folder / "runs"),
                                    "configs": [str(c) for c in configs], "grid": grid, "overrides": overrides},
                                   sort_keys=False))
    return path


def test_grid_expands_configs_times_values_with_stable_names(tmp_path: Path) -> None:
    config = write_small_config(tmp_path)
    sweep = load_sweep(_write_sweep(tmp_path, [config], {"seed": [0, 1], "alg.kl_div.coeff": [0.01, 0.1]},
                                    {"train_evaluation.n_iters": 3}))
    assert [r.name for r in sweep.runs] == [f"{tmp_path.name}__small__seed={s}__coeff={c}"
                                            for s in (0, 1) for c in (0.01, 0.1)]
    assert sweep.runs[1].overrides == ("train_evaluation.n_iters=3", "seed=0", "alg.kl_div.coeff=0.1")
    assert sweep.base_path == tmp_path / "runs"


def test_invalid_sweep_runs_are_reported_before_anything_runs(tmp_path: Path) -> None:
    config = write_small_config(tmp_path)
    with pytest.raises(ConfigError, match="alg.args.n_step: unknown key"):
        load_sweep(_write_sweep(tmp_path, [config], {"alg.args.n_step": [1]}, {}))
    (tmp_path / "bad.yml").write_text(yaml.safe_dump({"configs": [], "grids": {}}))
    with pytest.raises(ConfigError) as excinfo:
        load_sweep(tmp_path / "bad.yml")
    assert "grids: unknown key" in str(excinfo.value) and "configs: expected a non-empty list" in str(excinfo.value)


def _env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))


@pytest.mark.slow
def test_killed_sweep_reruns_to_completion_with_every_run_done_once(tmp_path: Path) -> None:
    config = write_small_config(tmp_path, n_iters=16, eval_every=8, save_every=2)
    sweep_file = _write_sweep(tmp_path, [config], {"seed": [0, 1, 2]}, {})
    command = [sys.executable, str(SWEEP_SCRIPT), "--sweep_config", str(sweep_file), "--num_workers", "2"]
    runs = tmp_path / "runs"
    process = subprocess.Popen(command, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    deadline = time.time() + 300
    while not list(runs.glob("*/checkpoints/checkpoint_000002")) and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    names = [f"{tmp_path.name}__small__seed={s}" for s in range(3)]
    interrupted = [n for n in names if not (runs / n / "run_complete.json").exists()]
    assert interrupted, "the sweep finished before it could be killed"

    again = subprocess.run(command, env=_env(), capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-3000:]
    summary = json.loads((runs / "sweep_summary.json").read_text())
    assert sorted(r["name"] for r in summary["runs"]) == names
    for name in names:
        run = runs / name
        assert (run / "run_complete.json").exists()
        iterations = [json.loads(line)["iteration"] for line in (run / "rollout_info.jsonl").read_text().splitlines()]
        assert iterations == list(range(1, 17)), name
        assert (run / "log.txt").read_text().count("run complete;") == 1, name
    # At least one killed run had a checkpoint and continued from it instead of starting over.
    assert any("resumed from" in (runs / n / "log.txt").read_text() for n in interrupted)
    third = subprocess.run(command, env=_env(), capture_output=True, text=True)
    assert third.returncode == 0 and third.stdout.count("already_complete") == 3


@pytest.mark.slow
def test_a_run_folder_is_trained_by_one_process_at_a_time(tmp_path: Path) -> None:
    config = write_small_config(tmp_path, n_iters=1)
    (tmp_path / "run").mkdir()
    lock = RunLock(tmp_path / "run").acquire()
    try:
        args = ["--config_path", str(config), "--base_path_to_store_results", str(tmp_path), "--experiment_name", "run"]
        assert main(args) == EXIT_RUN_LOCKED
    finally:
        lock.release()
    assert main(args) == 0


def test_shipped_sweep_expands_to_tasks_x_algorithms_x_seeds() -> None:
    sweep = load_sweep(REPO / "sweeps" / "synthetic.yml")
    names = {r.name for r in sweep.runs}
    assert len(names) == 12
    for task in ("synthetic_increasing_numbers", "synthetic_dates"):
        for alg in ("ppo", "nlpo", "a2c"):
            for seed in (0, 1):
                assert f"{task}__tiny_gpt2_{alg}__seed={seed}" in names
