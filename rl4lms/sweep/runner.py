"""Running a sweep: an executor trains each pending run in a subprocess; the runner keeps the score.

The run folder is the contract between the sweep and its executors: a finished run
(``run_complete.json``) is skipped, an interrupted one resumes from its checkpoints (the trainer
does that by itself), and the trainer's run lock keeps a run from being trained twice at once,
even by two sweeps started side by side or by a retry on another node.
"""
from __future__ import annotations

import ctypes
import json
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from threading import Lock
from abc import ABC, abstractmethod
from typing import Any, Callable, Dict, List, Optional

from rl4lms.errors import RunLockedError
from rl4lms.sweep.grid import RunSpec, Sweep
from rl4lms.training.artifacts import write_json_atomic
from rl4lms.training.trainer import COMPLETE_FILE

SUMMARY_FILE = "sweep_summary.json"
RUN_MARKER = "sweep_run.json"
FINISHED = ("completed", "already_complete")
PR_SET_PDEATHSIG = 1


@dataclass
class RunOutcome:
    """What happened to one run in this invocation of the sweep.

    :param status: completed | already_complete | running_elsewhere | failed
    :param node: where the run was trained (hostname, and the Ray node's address and id on Ray)
    """

    name: str
    status: str
    returncode: Optional[int] = None
    seconds: float = 0.0
    error_tail: str = ""
    node: Dict[str, str] = field(default_factory=dict)


def local_node() -> Dict[str, str]:
    """This machine, as recorded in ``sweep_run.json`` and ``sweep_summary.json``."""
    return {"hostname": socket.gethostname()}


def node_label(node: Dict[str, str]) -> str:
    """A short name for progress lines: the Ray node's address and id, else the hostname."""
    if "node_id" in node:
        return f"{node.get('ip', '?')} ({node['node_id'][:8]})"
    return node.get("hostname", "?")


def is_complete(run_dir: Path) -> bool:
    return (run_dir / COMPLETE_FILE).exists()


def train_command(spec: RunSpec, base_path: Path) -> List[str]:
    command = [sys.executable, "-m", "rl4lms.cli", "--config_path", str(spec.config_path),
               "--base_path_to_store_results", str(base_path), "--experiment_name", spec.name]
    for override in spec.overrides:
        command += ["--override", override]
    return command + (["--smoke"] if spec.smoke else [])


def _die_with_parent() -> None:
    """In the training subprocess (Linux): get SIGKILL when the process that started it dies, so a
    run never outlives its worker (a lost Ray node, a killed sweep) and keeps holding the run lock."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _record_attempt(run_dir: Path, spec: RunSpec, sweep_name: str, invocation: str, node: Dict[str, str]) -> None:
    """Append this attempt (which sweep invocation, which node, when) to the run's ``sweep_run.json``."""
    marker = run_dir / RUN_MARKER
    attempts = json.loads(marker.read_text()).get("attempts", []) if marker.exists() else []
    attempts.append({"invocation": invocation, "node": node, "started": time.time()})
    write_json_atomic(marker, {"sweep": sweep_name, "name": spec.name, "config_path": str(spec.config_path),
                               "grid_point": spec.grid_point, "overrides": list(spec.overrides),
                               "smoke": spec.smoke, "attempts": attempts})


def last_attempt(run_dir: Path) -> Dict[str, Any]:
    """The latest attempt recorded in the run's ``sweep_run.json`` ({} when there is none yet)."""
    try:
        return (json.loads((run_dir / RUN_MARKER).read_text()).get("attempts") or [{}])[-1]
    except (OSError, ValueError):
        return {}


def train_run(spec: RunSpec, sweep_name: str, base_path: Path, env: Dict[str, str], node: Dict[str, str],
              invocation: str) -> RunOutcome:
    """Train one run in a subprocess of the training CLI, on whichever machine calls this (a worker
    thread here, a Ray task on a cluster node). ``base_path`` must be the same folder for every node."""
    run_dir = base_path / spec.name
    if is_complete(run_dir):
        return RunOutcome(spec.name, "already_complete", node=node)
    run_dir.mkdir(parents=True, exist_ok=True)
    _record_attempt(run_dir, spec, sweep_name, invocation, node)
    start = time.perf_counter()
    with open(run_dir / "sweep_stdout.txt", "ab") as out:
        process = subprocess.run(train_command(spec, base_path), stdout=out, stderr=subprocess.PIPE, env=env,
                                 preexec_fn=_die_with_parent if sys.platform == "linux" else None)
    seconds = time.perf_counter() - start
    tail = process.stderr.decode(errors="replace")[-2000:]
    if process.returncode == 0:
        return RunOutcome(spec.name, "completed", 0, seconds, node=node)
    status = "running_elsewhere" if process.returncode == RunLockedError.exit_status else "failed"
    return RunOutcome(spec.name, status, process.returncode, seconds, tail, node)


class SweepProgress:
    """Counts runs done, failed, running (and where) and pending; prints a line on every change and
    keeps ``sweep_summary.json`` up to date."""

    def __init__(self, sweep: Sweep, log: Callable[..., None] = print) -> None:
        self.sweep = sweep
        self.log = log
        self.outcomes: Dict[str, RunOutcome] = {}
        self.running: Dict[str, Dict[str, str]] = {}
        self._lock = Lock()

    def counts(self) -> str:
        done = sum(o.status in FINISHED for o in self.outcomes.values())
        failed = len(self.outcomes) - done
        pending = len(self.sweep.runs) - len(self.outcomes) - len(self.running)
        return f"[done {done}, failed {failed}, running {len(self.running)}, pending {pending}]"

    def started(self, name: str, node: Dict[str, str]) -> None:
        with self._lock:
            if self.running.get(name) == node or name in self.outcomes:
                return
            self.running[name] = node
            self.log(f"{self.counts()} {name}: running on {node_label(node)}", flush=True)

    def finished(self, outcome: RunOutcome) -> None:
        with self._lock:
            self.running.pop(outcome.name, None)
            self.outcomes[outcome.name] = outcome
            where = f" on {node_label(outcome.node)}" if outcome.node and outcome.status != "already_complete" else ""
            self.log(f"{self.counts()} {outcome.name}: {outcome.status}{where}"
                     + (f" in {outcome.seconds:.1f} s" if outcome.seconds else ""), flush=True)
            if outcome.status == "failed":
                self.log(f"    exit code {outcome.returncode}; stderr tail:\n{outcome.error_tail}")
            self._write_summary()

    def _write_summary(self) -> None:
        write_json_atomic(self.sweep.base_path / SUMMARY_FILE, {
            "sweep": self.sweep.name, "num_runs": len(self.sweep.runs),
            "runs": [asdict(self.outcomes[r.name]) for r in self.sweep.runs if r.name in self.outcomes],
        })


class SweepExecutor(ABC):
    """Where the runs of a sweep are trained. An executor calls :func:`train_run` once per run
    (retrying it after a lost worker) and tells ``progress`` when a run starts and ends."""

    @abstractmethod
    def execute(self, sweep: Sweep, runs: List[RunSpec], invocation: str, progress: SweepProgress) -> None:
        """Train ``runs`` (the sweep's unfinished ones) and return when every one has an outcome."""

    def describe(self) -> str:
        """One line for the sweep's banner."""
        return type(self).__name__


class SweepRunner:
    """Executes a :class:`Sweep` on an executor and records the outcomes.

    :param sweep: the parsed sweep file
    :param executor: where the runs are trained (``rl4lms.sweep.executors.LocalExecutor`` or ``RayExecutor``)
    :param log: where progress lines go
    """

    def __init__(self, sweep: Sweep, executor: SweepExecutor, log: Callable[..., None] = print) -> None:
        self.sweep = sweep
        self.executor = executor
        self.progress = SweepProgress(sweep, log)
        self.invocation = uuid.uuid4().hex

    @property
    def outcomes(self) -> Dict[str, RunOutcome]:
        return self.progress.outcomes

    def run(self) -> bool:
        """Run every pending run; True when all of them are complete now."""
        self.sweep.base_path.mkdir(parents=True, exist_ok=True)
        pending = []
        for spec in self.sweep.runs:
            run_dir = self.sweep.base_path / spec.name
            if is_complete(run_dir):  # recorded with the node of its last attempt: where it ran
                node = last_attempt(run_dir).get("node", {})
                self.progress.finished(RunOutcome(spec.name, "already_complete", node=node))
            else:
                pending.append(spec)
        if pending:
            self.executor.execute(self.sweep, pending, self.invocation, self.progress)
        return all(o.status in FINISHED for o in self.outcomes.values())
