"""The Ray executor on a real 2-node cluster on this machine (loopback, own ports and temp folder):
one node is killed mid-run, every run still completes once, byte-identical to a local sweep."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest
import yaml

from conftest import REPO, skip_unless_ci, write_small_config

try:
    import ray  # noqa: F401
except ImportError:
    skip_unless_ci("needs ray: pip install 'rl4lms[ray]'", allow_module_level=True)

pytestmark = pytest.mark.slow  # a Ray cluster and CLI subprocesses

SWEEP_SCRIPT = REPO / "scripts" / "sweep.py"
# The files of a run that must not depend on where or in how many attempts it ran.
RESULT_FILES = ("rollout_info.jsonl", "training_info.jsonl", "run_complete.json", "test_split_metrics.jsonl",
                "val_split_metrics.jsonl", "model/model.safetensors", "model/value_head.safetensors")
N_ITERS = 40
"""Iterations per run: enough that the run on the worker node is still training when that node is killed
(its Ray worker notices the lost raylet within seconds, and only then does the training subprocess die)."""
WORKER_RESOURCE = "rl4lms_test_worker_node"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class LocalRayCluster:
    """A head and a worker node on this machine (Ray's own test cluster), every address 127.0.0.1."""

    cluster: Any
    worker: Any
    env: Dict[str, str]

    @property
    def address(self) -> str:
        return self.cluster.address

    def node_ids(self) -> Dict[str, str]:
        return {"head": self.cluster.head_node.node_id, "worker": self.worker.node_id}

    def kill_worker(self) -> None:
        """SIGKILL the worker node's processes (raylet, object store...); its Ray workers, and with them
        their training subprocesses, die when they lose their raylet."""
        self.cluster.remove_node(self.worker, allow_graceful=False)


@pytest.fixture
def ray_cluster(monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalRayCluster]:
    from ray._private import ray_constants
    from ray.cluster_utils import Cluster

    # Ray's local-only mode: nodes and drivers take 127.0.0.1 as their address instead of this
    # machine's network one (set here for the nodes, in the environment for the sweep's driver).
    monkeypatch.setattr(ray_constants, "ENABLE_RAY_CLUSTER", False)
    temp_dir = tempfile.mkdtemp(prefix="rl4lms_ray_", dir="/tmp")  # Ray's socket paths must be short
    env = dict(_env(), RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_USAGE_STATS_ENABLED="0", RAY_TMPDIR=temp_dir)
    for key in ("OMP_NUM_THREADS", "PYTHONPATH", "RAY_USAGE_STATS_ENABLED", "RAY_TMPDIR"):
        monkeypatch.setenv(key, env[key])  # the nodes' Ray workers inherit these; Ray's files stay in temp_dir
    node = {"num_cpus": 1, "num_gpus": 0, "node_ip_address": "127.0.0.1", "object_store_memory": 80_000_000}
    # A lost node is found within ~2 s instead of ~30 s.
    health = {"health_check_period_ms": 500, "health_check_timeout_ms": 500, "health_check_failure_threshold": 3}
    cluster = Cluster(initialize_head=True, head_node_args={**node, "gcs_server_port": _free_port(),
                                                            "include_dashboard": False, "_system_config": health})
    try:
        worker = cluster.add_node(**node, resources={WORKER_RESOURCE: 1})
        yield LocalRayCluster(cluster, worker, env)
    finally:
        cluster.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)


def _env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))


def _write_sweep(folder: Path, base: Path) -> Path:
    config = write_small_config(folder, n_iters=N_ITERS, eval_every=N_ITERS, save_every=2)
    path = folder / f"{base.name}.yml"
    path.write_text(yaml.safe_dump({"name": "t", "base_path_to_store_results": str(base), "configs": [str(config)],
                                    "grid": {"seed": [0, 1]}, "resources": {"num_cpus": 1}}))
    return path


def _sweep(sweep_file: Path, *args: str) -> List[str]:
    return [sys.executable, str(SWEEP_SCRIPT), "--sweep_config", str(sweep_file), *args]


def test_ray_sweep_survives_a_lost_node_and_matches_a_local_sweep(tmp_path: Path,
                                                                   ray_cluster: LocalRayCluster) -> None:
    local_runs, ray_runs = tmp_path / "local_runs", tmp_path / "ray_runs"
    local = subprocess.run(_sweep(_write_sweep(tmp_path, local_runs), "--num_workers", "2"), env=_env(),
                           capture_output=True, text=True, timeout=600)
    assert local.returncode == 0, local.stderr[-3000:]
    nodes = ray_cluster.node_ids()

    ray_sweep = subprocess.Popen(_sweep(_write_sweep(tmp_path, ray_runs), "--executor", "ray", "--ray_address",
                                        ray_cluster.address), env=ray_cluster.env, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        # Wait until the run on the worker node has a checkpoint, then take that node away.
        deadline, on_worker = time.time() + 300, None
        while on_worker is None and time.time() < deadline and ray_sweep.poll() is None:
            for run in ray_runs.glob("*/sweep_run.json"):
                attempts = json.loads(run.read_text())["attempts"]
                if attempts[-1]["node"]["node_id"] == nodes["worker"] and \
                        list(run.parent.glob("checkpoints/checkpoint_*")):
                    on_worker = run.parent
            time.sleep(0.1)
        assert on_worker is not None, "no run reached a checkpoint on the worker node"
        assert not (on_worker / "run_complete.json").exists()
        ray_cluster.kill_worker()
        output, _ = ray_sweep.communicate(timeout=300)
    finally:
        if ray_sweep.poll() is None:
            os.killpg(ray_sweep.pid, signal.SIGKILL)
    assert ray_sweep.returncode == 0, output[-3000:]
    assert "running on 127.0.0.1" in output and "[done 2, failed 0, running 0, pending 0]" in output, output

    summary = json.loads((ray_runs / "sweep_summary.json").read_text())
    assert {r["status"] for r in summary["runs"]} == {"completed"}
    assert {r["node"]["node_id"] for r in summary["runs"]} == {nodes["head"]}  # where each run finished
    attempts = json.loads((on_worker / "sweep_run.json").read_text())["attempts"]
    assert [a["node"]["node_id"] for a in attempts] == [nodes["worker"], nodes["head"]]
    log = (on_worker / "log.txt").read_text()
    assert "resumed from" in log and log.count("run complete;") == 1
    for run in sorted(local_runs.glob("*/run_complete.json")):
        for name in RESULT_FILES:
            assert (ray_runs / run.parent.name / name).read_bytes() == (run.parent / name).read_bytes(), \
                f"{run.parent.name}/{name} differs between the local and the Ray sweep"
    assert len(list(ray_runs.glob("*/run_complete.json"))) == 2


def test_an_unreachable_ray_address_is_one_clear_line(tmp_path: Path) -> None:
    port = _free_port()  # closed again: nothing listens there
    result = subprocess.run(_sweep(_write_sweep(tmp_path, tmp_path / "runs"), "--executor", "ray", "--ray_address",
                                   f"127.0.0.1:{port}"), env=_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: --ray_address 127.0.0.1:{port}: no Ray cluster answers there (Connection refused); start one "
        f"with `ray start --head --port {port}`, or leave --ray_address out to start a local cluster for the sweep"]
    assert not (tmp_path / "runs").exists()
