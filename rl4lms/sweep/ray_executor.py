"""The Ray executor: each run of a sweep is a Ray task on a cluster, whose nodes share the results folder.

A task that loses its node (or its worker process) is retried by Ray on another node; the retry
finds the run folder where the lost attempt left it and resumes from its last checkpoint. The
training subprocess dies with its task (``PR_SET_PDEATHSIG``), so the run lock is free for the retry.
"""
from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from rl4lms.errors import ExecutorError
from rl4lms.sweep.grid import RunResources, RunSpec, Sweep
from rl4lms.sweep.runner import RunOutcome, SweepExecutor, SweepProgress, last_attempt, train_run

POLL_SECONDS = 1.0
CONNECT_TIMEOUT_SECONDS = 5.0
INSTALL_HINT = "pip install 'rl4lms[ray]' (or pip install 'ray==2.60.*')"


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as error:
        raise ExecutorError(f"--executor ray needs the ray package ({error}); install it with: {INSTALL_HINT}") from error
    return ray


def _host_port(address: str) -> Optional[Tuple[str, int]]:
    """``host:port`` of a cluster address (``ray://`` prefix allowed); None for ``auto``."""
    if address == "auto":
        return None
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ExecutorError(f"--ray_address '{address}': expected HOST:PORT (the head's GCS port, as printed by "
                            f"`ray start --head`), ray://HOST:PORT or auto")
    return host, int(port)


def check_reachable(address: str) -> None:
    """Fail fast with one line when nothing listens at ``address`` (``ray.init`` itself retries for minutes)."""
    target = _host_port(address)
    if target is None:
        return
    try:
        socket.create_connection(target, timeout=CONNECT_TIMEOUT_SECONDS).close()
    except OSError as error:
        raise ExecutorError(f"--ray_address {address}: no Ray cluster answers there ({error.strerror or error}); "
                            f"start one with `ray start --head --port {target[1]}`, or leave --ray_address out "
                            f"to start a local cluster for the sweep") from error


def _train_on_node(spec: RunSpec, sweep_name: str, base_path: str, invocation: str, threads: int) -> RunOutcome:
    """The Ray task: train one run on the node Ray picked (the worker's environment gives its GPUs)."""
    import ray

    node = {"hostname": socket.gethostname(), "ip": ray.util.get_node_ip_address(),
            "node_id": ray.get_runtime_context().get_node_id()}
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    return train_run(spec, sweep_name, Path(base_path), env, node, invocation)


class RayExecutor(SweepExecutor):
    """Each run is a Ray task that reserves the sweep file's ``resources`` (default one CPU), on the
    cluster at ``address`` or on a local one started for the sweep.

    :param resources: CPUs (also the run's threads) and GPUs per run
    :param address: the cluster (``HOST:PORT``, ``ray://HOST:PORT`` or ``auto``); None starts a local one
    :param max_retries: how often a run is retried after its node or worker process dies
    """

    def __init__(self, resources: RunResources = RunResources(), address: Optional[str] = None,
                 max_retries: int = 3) -> None:
        if max_retries < 0:
            raise ExecutorError(f"--max_retries must be >= 0, got {max_retries}")
        if address:
            check_reachable(address)
        self.ray = _import_ray()
        self.resources = resources
        self.address = address
        self.max_retries = max_retries

    def describe(self) -> str:
        where = f"the Ray cluster at {self.address}" if self.address else "a local Ray cluster"
        return (f"{where}, {self.resources.num_cpus or 1} CPU(s) and {self.resources.num_gpus:g} GPU(s) per run, "
                f"{self.max_retries} retries")

    def _connect(self) -> None:
        try:
            self.ray.init(address=self.address, include_dashboard=False, log_to_driver=False,
                          logging_level="warning", configure_logging=True)
        except (ConnectionError, RuntimeError, ValueError) as error:
            raise ExecutorError(f"--ray_address {self.address or '(local)'}: could not join the Ray cluster: "
                                f"{str(error).splitlines()[0] if str(error) else type(error).__name__}") from error

    def execute(self, sweep: Sweep, runs: List[RunSpec], invocation: str, progress: SweepProgress) -> None:
        self._connect()
        try:
            self._run_tasks(sweep, runs, invocation, progress)
        finally:
            self.ray.shutdown()

    def _run_tasks(self, sweep: Sweep, runs: List[RunSpec], invocation: str, progress: SweepProgress) -> None:
        threads = self.resources.num_cpus or 1
        task = self.ray.remote(_train_on_node).options(num_cpus=threads, num_gpus=self.resources.num_gpus,
                                                       max_retries=self.max_retries, retry_exceptions=False)
        base_path = str(sweep.base_path.resolve())
        waiting: Dict[Any, RunSpec] = {task.remote(spec, sweep.name, base_path, invocation, threads): spec
                                       for spec in runs}
        while waiting:
            ready, _ = self.ray.wait(list(waiting), num_returns=1, timeout=POLL_SECONDS)
            for ref in ready:
                spec = waiting.pop(ref)
                try:
                    outcome = self.ray.get(ref)
                except self.ray.exceptions.RayError as error:  # retries used up, or the cluster went away
                    outcome = RunOutcome(spec.name, "failed", error_tail=str(error)[-2000:],
                                         node=last_attempt(sweep.base_path / spec.name).get("node", {}))
                progress.finished(outcome)
            for spec in waiting.values():
                attempt = last_attempt(sweep.base_path / spec.name)
                if attempt.get("invocation") == invocation:
                    progress.started(spec.name, attempt["node"])
