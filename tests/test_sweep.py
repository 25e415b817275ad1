"""Sweeps: grid expansion, kill + rerun completes every run exactly once, one trainer per run folder,
the local executor's GPUs and threads."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import REPO, write_small_config
from rl4lms.cli import main
from rl4lms.errors import ConfigError, ExecutorError, RunLockedError
from rl4lms.sweep.executors import LocalExecutor, make_executor
from rl4lms.sweep.grid import RunResources, load_sweep
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
    (tmp_path / "broken.yml").write_text("configs: [a.yml\ngrid: {}\n")
    with pytest.raises(ConfigError, match=r"broken.yml, line \d+, column \d+: invalid YAML") as excinfo:
        load_sweep(tmp_path / "broken.yml")
    assert len(str(excinfo.value).splitlines()) == 1


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
    summary = json.loads((runs / "sweep_summary.json").read_text())  # still says where each run ran
    assert [r["node"] for r in summary["runs"]] == [{"hostname": socket.gethostname()}] * 3


@pytest.mark.slow
def test_a_run_folder_is_trained_by_one_process_at_a_time(tmp_path: Path) -> None:
    config = write_small_config(tmp_path, n_iters=1)
    (tmp_path / "run").mkdir()
    lock = RunLock(tmp_path / "run").acquire()
    try:
        args = ["--config_path", str(config), "--base_path_to_store_results", str(tmp_path), "--experiment_name", "run"]
        assert main(args) == RunLockedError.exit_status
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


def test_local_workers_get_their_own_gpus_and_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    four = LocalExecutor(num_workers=2, device_count=4)
    assert [four.worker_env(s)["CUDA_VISIBLE_DEVICES"] for s in (0, 1)] == ["0,1", "2,3"]
    assert four.worker_env(0)["OMP_NUM_THREADS"] == str(max(1, (os.cpu_count() or 1) // 2))
    three_on_two = LocalExecutor(num_workers=3, device_count=2)  # fewer GPUs than workers: they take turns
    assert [three_on_two.worker_env(s)["CUDA_VISIBLE_DEVICES"] for s in range(3)] == ["0", "1", "0"]
    one_each = LocalExecutor(num_workers=2, resources=RunResources(num_cpus=3, num_gpus=1), device_count=8)
    assert [one_each.worker_env(s)["CUDA_VISIBLE_DEVICES"] for s in (0, 1)] == ["0", "1"]
    assert one_each.worker_env(1)["OMP_NUM_THREADS"] == "3"
    assert "CUDA_VISIBLE_DEVICES" not in LocalExecutor(num_workers=2, device_count=0).worker_env(0)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6")  # only these may be handed out
    assert [LocalExecutor(num_workers=2).worker_env(s)["CUDA_VISIBLE_DEVICES"] for s in (0, 1)] == ["4", "6"]
    with pytest.raises(ExecutorError, match="resources.num_gpus: 2 workers x 2 GPUs need 4 GPUs, 2 visible"):
        LocalExecutor(num_workers=2, resources=RunResources(num_gpus=2))


def test_sweep_resources_variants_and_smoke_are_validated(tmp_path: Path) -> None:
    config = write_small_config(tmp_path)
    path = _write_sweep(tmp_path, [config], {"seed": [0]}, {})
    raw = yaml.safe_load(path.read_text())
    raw.update(smoke=True, resources={"num_cpus": 2, "num_gpus": 0.5},
               variants={"low_lr": {"alg.args.learning_rate": 1e-6}, "high_lr": {"alg.args.learning_rate": 1e-3}})
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    sweep = load_sweep(path)
    assert sweep.resources == RunResources(num_cpus=2, num_gpus=0.5)
    assert [r.name for r in sweep.runs] == [f"{tmp_path.name}__small__{v}__seed=0" for v in ("low_lr", "high_lr")]
    assert sweep.runs[0].smoke and sweep.runs[0].grid_point == {"variant": "low_lr", "seed": 0}
    assert sweep.runs[0].overrides == ("alg.args.learning_rate=1.0e-06", "seed=0")
    raw.update(resources={"num_cpu": 1, "num_gpus": -1}, variants={"bad": {"alg.args.n_step": 1}})
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    with pytest.raises(ConfigError) as excinfo:
        load_sweep(path)
    assert "resources.num_cpu: unknown key" in str(excinfo.value) and "resources.num_gpus: expected a number" in str(
        excinfo.value)
    raw["resources"] = {}
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    with pytest.raises(ConfigError, match=r"small.yml \(variant bad\): alg.args.n_step: unknown key"):
        load_sweep(path)


def _env_without_ray(folder: Path) -> tuple:
    """An environment whose first `ray` on the path leaves a mark when anything imports it, in the sweep
    or in a training subprocess (a plain absence could be hidden by a caught ImportError), and the mark."""
    blocker, mark = folder / "blocker" / "ray", folder / "ray_was_imported"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text(f"open({str(mark)!r}, 'a').write(__name__)\n"
                                         "raise ImportError('No module named ray')\n")
    return dict(_env(), PYTHONPATH=f"{blocker.parent}{os.pathsep}{REPO}"), mark


@pytest.mark.slow
def test_the_local_executor_never_imports_ray(tmp_path: Path) -> None:
    env, mark = _env_without_ray(tmp_path)
    sweep_file = _write_sweep(tmp_path, [write_small_config(tmp_path, n_iters=1, eval_every=1)], {"seed": [0, 1]}, {})
    command = [sys.executable, str(SWEEP_SCRIPT), "--sweep_config", str(sweep_file)]
    listed = subprocess.run(command + ["--dry_run"], env=env, capture_output=True, text=True)
    assert listed.returncode == 0, listed.stderr[-2000:]
    assert listed.stdout.splitlines() == [f"{tmp_path.name}__small__seed=0", f"{tmp_path.name}__small__seed=1",
                                          f"sweep 't': 2 valid runs under {tmp_path / 'runs'}"]
    assert not (tmp_path / "runs").exists()
    ran = subprocess.run(command + ["--num_workers", "2"], env=env, capture_output=True, text=True)
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert "on 2 local workers" in ran.stdout and "[done 2, failed 0, running 0, pending 0]" in ran.stdout
    assert len(list((tmp_path / "runs").glob("*/run_complete.json"))) == 2
    assert not mark.exists(), "the local executor imported ray"


def test_a_variant_applies_to_the_configs_its_patterns_name(tmp_path: Path) -> None:
    ppo, a2c = (write_small_config(tmp_path, name=f"small_{alg}.yml") for alg in ("ppo", "a2c"))
    path = _write_sweep(tmp_path, [ppo, a2c], {"seed": [0]}, {})
    raw = yaml.safe_load(path.read_text())
    raw["variants"] = {"base": {}, "low_lr": {"configs": ["*_ppo.yml"], "alg.args.learning_rate": 1e-6}}
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    runs = load_sweep(path).runs
    assert [r.name for r in runs] == [f"{tmp_path.name}__small_ppo__base__seed=0",
                                      f"{tmp_path.name}__small_ppo__low_lr__seed=0",
                                      f"{tmp_path.name}__small_a2c__base__seed=0"]
    assert runs[1].overrides == ("alg.args.learning_rate=1.0e-06", "seed=0")  # the patterns are no override
    assert runs[1].grid_point == {"variant": "low_lr", "seed": 0}

    raw["variants"] = {"low_lr": {"configs": ["*_ppo.yml"]}, "typo": {"configs": ["*_nlpo.yml"]}}
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    with pytest.raises(ConfigError) as excinfo:
        load_sweep(path)
    assert f"configs: {a2c} matches no variant's configs patterns" in str(excinfo.value)
    assert "variants.typo.configs: ['*_nlpo.yml'] matches none of the configs' file names (small_ppo.yml, " \
           "small_a2c.yml)" in str(excinfo.value)
    raw["variants"] = {"low_lr": {"configs": "*_ppo.yml"}}
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    with pytest.raises(ConfigError, match=r"variants.low_lr.configs: expected a non-empty list of config file name"):
        load_sweep(path)


@pytest.mark.slow
def test_shipped_grue_sweep_is_every_task_x_four_algorithms_x_three_seeds() -> None:
    sweep = load_sweep(REPO / "sweeps" / "grue_smoke.yml")
    assert len(sweep.runs) == 7 * 4 * 3 and all(r.smoke for r in sweep.runs)
    assert sweep.resources == RunResources(num_cpus=1)
    algorithms = {}
    for run in sweep.runs:
        alg = next((o.split("=", 1)[1] for o in run.overrides if o.startswith("alg.id=")), None)
        algorithms.setdefault(run.config_path.parent.name, set()).add(alg or run.config_path.stem.split("_")[-1])
    assert algorithms == {task: {"ppo", "nlpo", "grpo", "rloo"} for task in (
        "imdb_text_continuation", "common_gen", "summarization", "iwslt2017", "narrative_qa", "dialog", "totto")}
    assert "common_gen__t5_ppo__rloo__seed=2" in {r.name for r in sweep.runs}


@pytest.mark.slow
def test_executor_mistakes_are_one_line_even_without_ray(tmp_path: Path) -> None:
    env, _ = _env_without_ray(tmp_path)
    sweep_file = _write_sweep(tmp_path, [write_small_config(tmp_path)], {"seed": [0]}, {})
    result = subprocess.run([sys.executable, str(SWEEP_SCRIPT), "--sweep_config", str(sweep_file), "--executor", "ray"],
                            env=env, capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: --executor ray needs the ray package (No module named ray); install it with: "
        "pip install 'rl4lms[ray]' (or pip install 'ray==2.60.*')"]
    assert not (tmp_path / "runs").exists()
    with pytest.raises(ExecutorError, match="--num_workers is only used with --executor local"):
        make_executor("ray", load_sweep(sweep_file), num_workers=2)
    with pytest.raises(ExecutorError, match="--ray_address is only used with --executor ray"):
        make_executor("local", load_sweep(sweep_file), ray_address="127.0.0.1:6379")
