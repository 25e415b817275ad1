"""Finished run folders read back: which task, algorithm, grid variant and seed, and their numbers."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List

SPLITS = ("test", "val")


@dataclass
class RunRecord:
    """The numbers of one finished run, read from its artifact files."""

    path: Path
    task: str
    algorithm: str
    variant: str
    seed: int
    final: Dict[str, Dict[str, float]]  # split -> metric -> value after training
    curves: List[Dict[str, Any]] = field(default_factory=list)  # rollout_info.jsonl records

    @property
    def label(self) -> str:
        """The algorithm, and its grid variant when there is one: what the aggregate statistics compare."""
        return f"{self.algorithm} {self.variant}" if self.variant else self.algorithm


def _variant(run_dir: Path, algorithm: str) -> str:
    """The grid point of a sweep run, seeds left out (they are what the table averages over), and the
    sweep variant left out too when it is named after the run's algorithm (``grpo`` on a PPO config)."""
    marker = run_dir / "sweep_run.json"
    if not marker.exists():
        return ""
    point = json.loads(marker.read_text()).get("grid_point", {})
    return ", ".join(f"{key}={value}" for key, value in point.items()
                     if key.split(".")[-1] != "seed" and not (key == "variant" and value == algorithm))


def read_run(run_dir: Path) -> RunRecord:
    """Read a finished run folder (``config.json``, ``run_complete.json``, ``rollout_info.jsonl``)."""
    config = json.loads((run_dir / "config.json").read_text())
    summary = json.loads((run_dir / "run_complete.json").read_text())
    rollout_file = run_dir / "rollout_info.jsonl"
    curves = [json.loads(line) for line in rollout_file.read_text().splitlines()] if rollout_file.exists() else []
    final = {split: dict((summary.get(split) or {}).get("after") or {}) for split in SPLITS}
    algorithm = config["alg"]["id"]
    return RunRecord(run_dir, config["datapool"]["id"], algorithm, _variant(run_dir, algorithm), int(config["seed"]),
                     final, curves)


def find_runs(root: Path) -> List[RunRecord]:
    """Every finished run under ``root`` (unfinished folders have no ``run_complete.json`` and are skipped)."""
    return [read_run(marker.parent) for marker in sorted(root.rglob("run_complete.json"))]
