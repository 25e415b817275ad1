"""Running a sweep: worker threads each drive one training subprocess at a time.

A finished run (``run_complete.json``) is skipped, an interrupted one resumes from its
checkpoints (the trainer does that by itself), and the trainer's run lock keeps a run from
being trained twice at once, even by two sweeps started side by side.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from threading import Lock
from typing import Callable, Dict, List, Optional

from rl4lms.cli import EXIT_RUN_LOCKED
from rl4lms.sweep.grid import RunSpec, Sweep
from rl4lms.training.artifacts import write_json_atomic
from rl4lms.training.trainer import COMPLETE_FILE

SUMMARY_FILE = "sweep_summary.json"


@dataclass
class RunOutcome:
    """What happened to one run in this invocation of the sweep."""

    name: str
    status: str  # completed | already_complete | running_elsewhere | failed
    returncode: Optional[int] = None
    seconds: float = 0.0
    error_tail: str = ""


def train_command(spec: RunSpec, base_path: Path) -> List[str]:
    command = [sys.executable, "-m", "rl4lms.cli", "--config_path", str(spec.config_path),
               "--base_path_to_store_results", str(base_path), "--experiment_name", spec.name]
    for override in spec.overrides:
        command += ["--override", override]
    return command


class SweepRunner:
    """Executes a :class:`Sweep` with ``num_workers`` runs in parallel and records the outcomes."""

    def __init__(self, sweep: Sweep, num_workers: int = 1, log: Callable[..., None] = print) -> None:
        if num_workers < 1:
            raise ValueError(f"--num_workers must be >= 1, got {num_workers}")
        self.sweep = sweep
        self.num_workers = num_workers
        self.log = log
        self.outcomes: Dict[str, RunOutcome] = {}
        self._lock = Lock()

    def run_one(self, spec: RunSpec) -> RunOutcome:
        run_dir = self.sweep.base_path / spec.name
        if (run_dir / COMPLETE_FILE).exists():
            return self._record(RunOutcome(spec.name, "already_complete"))
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "sweep_run.json").write_text(json.dumps({"sweep": self.sweep.name, "name": spec.name,
                                                           "config_path": str(spec.config_path),
                                                           "grid_point": spec.grid_point,
                                                           "overrides": list(spec.overrides)}))
        start = time.perf_counter()
        with open(run_dir / "sweep_stdout.txt", "ab") as out:
            process = subprocess.run(train_command(spec, self.sweep.base_path), stdout=out, stderr=subprocess.PIPE,
                                     env=self.worker_env())
        seconds = time.perf_counter() - start
        tail = process.stderr.decode(errors="replace")[-2000:]
        if process.returncode == 0:
            return self._record(RunOutcome(spec.name, "completed", 0, seconds))
        if process.returncode == EXIT_RUN_LOCKED:
            return self._record(RunOutcome(spec.name, "running_elsewhere", process.returncode, seconds, tail))
        return self._record(RunOutcome(spec.name, "failed", process.returncode, seconds, tail))

    def worker_env(self) -> Dict[str, str]:
        """The environment of a training subprocess: the CPU cores are shared out between the
        workers (oversubscribed OpenMP threads slow every run down many times over), unless
        ``OMP_NUM_THREADS`` is already set."""
        env = dict(os.environ)
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // self.num_workers)))
        return env

    def _record(self, outcome: RunOutcome) -> RunOutcome:
        with self._lock:
            self.outcomes[outcome.name] = outcome
            done = len(self.outcomes)
            self.log(f"[{done}/{len(self.sweep.runs)}] {outcome.name}: {outcome.status}"
                     + (f" in {outcome.seconds:.1f} s" if outcome.seconds else ""), flush=True)
            if outcome.status == "failed":
                self.log(f"    exit code {outcome.returncode}; stderr tail:\n{outcome.error_tail}")
            self._write_summary()
        return outcome

    def _write_summary(self) -> None:
        write_json_atomic(self.sweep.base_path / SUMMARY_FILE, {
            "sweep": self.sweep.name, "num_runs": len(self.sweep.runs),
            "runs": [asdict(self.outcomes[r.name]) for r in self.sweep.runs if r.name in self.outcomes],
        })

    def run(self) -> bool:
        """Run every pending run; True when all of them are complete now."""
        self.sweep.base_path.mkdir(parents=True, exist_ok=True)
        with ThreadPoolExecutor(max_workers=self.num_workers) as pool:
            list(pool.map(self.run_one, self.sweep.runs))
        return all(o.status in ("completed", "already_complete") for o in self.outcomes.values())
