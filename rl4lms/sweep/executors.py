"""Sweep executors: worker threads on this machine (the default, no server) or Ray tasks on a cluster.

``make_executor`` picks one by name; the Ray one is imported only when asked for, so the local
path never imports ``ray``.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from queue import Queue
from typing import Dict, List, Optional, Sequence

from rl4lms.errors import ExecutorError
from rl4lms.sweep.grid import RunResources, RunSpec, Sweep
from rl4lms.sweep.runner import SweepExecutor, SweepProgress, local_node, train_run

EXECUTORS = ("local", "ray")


def visible_devices(device_count: Optional[int] = None) -> List[str]:
    """The GPU ids this process may hand out: ``CUDA_VISIBLE_DEVICES`` when set, else ``0..n-1`` for
    ``device_count`` devices (default: what torch sees)."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None and device_count is None:
        return [d for d in listed.split(",") if d.strip()]
    if device_count is None:
        import torch

        device_count = torch.cuda.device_count()
    return [str(i) for i in range(device_count)]


def split_devices(devices: Sequence[str], num_workers: int, per_run: Optional[float] = None) -> List[List[str]]:
    """The GPUs of each worker slot: ``per_run`` each when the sweep file asks for it, else an even
    share; with fewer GPUs than workers, the workers take turns round the devices."""
    if not devices:
        return [[] for _ in range(num_workers)]
    if per_run is not None and per_run >= 1:
        size = int(per_run)
        if size * num_workers > len(devices):
            raise ExecutorError(f"resources.num_gpus: {num_workers} workers x {size} GPUs need {size * num_workers} "
                                f"GPUs, {len(devices)} visible ({','.join(devices)}); lower --num_workers")
    else:
        size = len(devices) // num_workers
    if size == 0:
        return [[devices[slot % len(devices)]] for slot in range(num_workers)]
    return [list(devices[slot * size:(slot + 1) * size]) for slot in range(num_workers)]


class LocalExecutor(SweepExecutor):
    """``num_workers`` runs at a time on this machine, each a training subprocess with its own CPU
    threads and, when there are GPUs, its own GPUs (``CUDA_VISIBLE_DEVICES``).

    :param num_workers: runs trained at the same time
    :param resources: the sweep file's per-run resources (``num_cpus`` sets each run's threads)
    :param device_count: GPUs to share out (default: ``CUDA_VISIBLE_DEVICES`` or what torch sees)
    """

    def __init__(self, num_workers: int = 1, resources: RunResources = RunResources(),
                 device_count: Optional[int] = None) -> None:
        if num_workers < 1:
            raise ExecutorError(f"--num_workers must be >= 1, got {num_workers}")
        self.num_workers = num_workers
        self.resources = resources
        self.slot_devices = split_devices(visible_devices(device_count), num_workers,
                                          resources.num_gpus if resources.num_gpus else None)

    def describe(self) -> str:
        return f"{self.num_workers} local workers"

    def worker_env(self, slot: int) -> Dict[str, str]:
        """The environment of a training subprocess in worker slot ``slot``. Threads: the sweep file's
        ``resources.num_cpus``, else ``OMP_NUM_THREADS`` when set, else the cores shared out between
        the workers (oversubscribed OpenMP threads slow every run down many times over)."""
        env = dict(os.environ)
        if self.resources.num_cpus:
            env["OMP_NUM_THREADS"] = str(self.resources.num_cpus)
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // self.num_workers)))
        if self.slot_devices[slot]:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(self.slot_devices[slot])
        return env

    def execute(self, sweep: Sweep, runs: List[RunSpec], invocation: str, progress: SweepProgress) -> None:
        free_slots: Queue = Queue()
        for slot in range(self.num_workers):
            free_slots.put(slot)
        node = local_node()

        def run_in_slot(spec: RunSpec) -> None:
            slot = free_slots.get()
            try:
                slot_node = {**node, "devices": ",".join(self.slot_devices[slot])} if self.slot_devices[slot] else node
                progress.started(spec.name, slot_node)
                progress.finished(train_run(spec, sweep.name, sweep.base_path, self.worker_env(slot), slot_node,
                                            invocation))
            finally:
                free_slots.put(slot)

        with ThreadPoolExecutor(max_workers=self.num_workers) as pool:
            list(pool.map(run_in_slot, runs))


def make_executor(name: str, sweep: Sweep, num_workers: Optional[int] = None, ray_address: Optional[str] = None,
                  max_retries: int = 3) -> SweepExecutor:
    """The executor called ``name`` (``local`` or ``ray``) for ``sweep``; ``num_workers`` (local only)
    defaults to 1."""
    if name == "local":
        if ray_address:
            raise ExecutorError("--ray_address is only used with --executor ray")
        return LocalExecutor(1 if num_workers is None else num_workers, sweep.resources)
    if name == "ray":
        if num_workers is not None:
            raise ExecutorError("--num_workers is only used with --executor local; on Ray, the sweep file's "
                                "resources.num_cpus and num_gpus decide how many runs share a node")
        from rl4lms.sweep.ray_executor import RayExecutor

        return RayExecutor(sweep.resources, ray_address, max_retries)
    raise ExecutorError(f"--executor: unknown executor '{name}'; valid choices: {', '.join(EXECUTORS)}")
