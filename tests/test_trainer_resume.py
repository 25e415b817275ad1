"""A run killed with SIGKILL resumes from its last checkpoint and ends as if never interrupted."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import DEFAULT_CONFIG, REPO, write_small_config

pytestmark = pytest.mark.slow  # every test here trains, kills and resumes runs

SCRIPT = REPO / "scripts" / "training" / "train_text_generation.py"


def _command(config: Path, base: Path, name: str) -> list:
    return [sys.executable, str(SCRIPT), "--config_path", str(config), "--base_path_to_store_results", str(base),
            "--experiment_name", name]


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    return env


def kill_after_checkpoint(config: Path, base: Path, name: str, iteration: int, timeout: float = 300) -> Path:
    """Start run ``name`` and ``kill -9`` it as soon as its checkpoint of ``iteration`` exists; its folder."""
    process = subprocess.Popen(_command(config, base, name), env=_env(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    checkpoint = base / name / "checkpoints" / f"checkpoint_{iteration:06d}"
    deadline = time.time() + timeout
    while not checkpoint.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (base / name / "run_complete.json").exists(), "the run finished before it could be killed"
    return base / name


def _jsonl(path: Path) -> list:
    lines = path.read_text().splitlines()
    return [json.loads(line) for line in lines]  # every line must be complete JSON


NLPO_CONFIG = REPO / "task_configs" / "synthetic_increasing_numbers" / "tiny_gpt2_nlpo.yml"
GRPO_CONFIG = REPO / "task_configs" / "synthetic_increasing_numbers" / "tiny_gpt2_grpo.yml"


@pytest.mark.parametrize("base, policy_args, alg_args", [
    (DEFAULT_CONFIG, {}, {}),
    # NLPO: the mask model refreshes every 3 updates, so the kill lands between refreshes and the
    # resumed run must restore both the mask model and its refresh counter.
    (NLPO_CONFIG, {"target_update_iterations": 3, "min_tokens_to_keep": 20}, {}),
    # GRPO without a value head or reference; dynamic sampling drops flat groups and draws more
    # prompts (a generation batch holds about n_steps * n_envs tokens, so most rollouts refill).
    (GRPO_CONFIG, {}, {"num_generations": 4, "dynamic_sampling": True, "num_iterations": 2, "n_steps": 36}),
], ids=["ppo", "nlpo", "grpo"])
def test_killed_run_resumes_and_matches_uninterrupted_run(tmp_path: Path, base: Path, policy_args: dict,
                                                          alg_args: dict) -> None:
    config = write_small_config(tmp_path, n_iters=30, eval_every=5, save_every=5, base=base, policy_args=policy_args,
                                alg_args=alg_args)
    subprocess.run(_command(config, tmp_path, "straight"), env=_env(), check=True, capture_output=True)

    run = kill_after_checkpoint(config, tmp_path, "killed", 10)
    killed_at = len(_jsonl(run / "rollout_info.jsonl"))
    assert 10 <= killed_at < 30

    resumed = subprocess.run(_command(config, tmp_path, "killed"), env=_env(), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in (run / "log.txt").read_text()

    rollouts = _jsonl(run / "rollout_info.jsonl")
    assert [r["iteration"] for r in rollouts] == list(range(1, 31))
    assert [r["epoch"] for r in _jsonl(run / "val_split_metrics.jsonl")] == [0, 5, 10, 15, 20, 25, 30]
    assert [r["epoch"] for r in _jsonl(run / "test_split_metrics.jsonl")] == [0, 30]

    # Records of iterations that were redone are archived, not lost.
    if killed_at > 10:
        archived = [json.loads(line) for f in (run / "superseded").glob("rollout_info.*.jsonl")
                    for line in f.read_text().splitlines()]
        assert sorted(r["iteration"] for r in archived) == list(range(11, killed_at + 1))

    # Policy weights, optimizer, KL coefficient, RNG and prompt sampler were all restored:
    straight = _jsonl(tmp_path / "straight" / "rollout_info.jsonl")
    for ours, reference in zip(rollouts, straight):
        assert ours["rollout_info/ep_rew"] == reference["rollout_info/ep_rew"]
        assert ours["rollout_info/kl_div_mean"] == reference["rollout_info/kl_div_mean"]
    # ... so the two runs are bit-identical: every record and the final weights.
    assert rollouts == straight
    assert _jsonl(run / "training_info.jsonl") == _jsonl(tmp_path / "straight" / "training_info.jsonl")
    # Every file of the checkpoints and of the final model (their manifests included) is byte-identical.
    for folder in ("checkpoints", "model"):
        assert _files(run / folder) == _files(tmp_path / "straight" / folder), folder
    assert (run / "run_complete.json").read_bytes() == (tmp_path / "straight" / "run_complete.json").read_bytes()


def _files(folder: Path) -> dict:
    """Every file below ``folder`` by relative path, with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_rerunning_a_finished_run_changes_nothing(tmp_path: Path) -> None:
    config = write_small_config(tmp_path, n_iters=2, eval_every=1, save_every=1)
    subprocess.run(_command(config, tmp_path, "run"), env=_env(), check=True, capture_output=True)
    before = {p.name: p.read_bytes() for p in (tmp_path / "run").glob("*.jsonl")}
    again = subprocess.run(_command(config, tmp_path, "run"), env=_env(), capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "run already complete" in again.stderr
    assert {p.name: p.read_bytes() for p in (tmp_path / "run").glob("*.jsonl")} == before
