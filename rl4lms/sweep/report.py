"""GRUE-style results from run folders: task x algorithm tables (mean ± std over seeds) and plots."""
from __future__ import annotations

import csv
import json
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Tuple

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


@dataclass
class ResultRow:
    """Mean and standard deviation over seeds of every final metric of one (task, algorithm, variant)."""

    task: str
    algorithm: str
    variant: str
    seeds: List[int]
    scores: Dict[Tuple[str, str], Tuple[float, float]]  # (split, metric) -> (mean, std)


def _variant(run_dir: Path) -> str:
    """The grid point of a sweep run, seeds left out (they are what the table averages over)."""
    marker = run_dir / "sweep_run.json"
    if not marker.exists():
        return ""
    point = json.loads(marker.read_text()).get("grid_point", {})
    return ", ".join(f"{key}={value}" for key, value in point.items() if key.split(".")[-1] != "seed")


def read_run(run_dir: Path) -> RunRecord:
    """Read a finished run folder (``config.json``, ``run_complete.json``, ``rollout_info.jsonl``)."""
    config = json.loads((run_dir / "config.json").read_text())
    summary = json.loads((run_dir / "run_complete.json").read_text())
    rollout_file = run_dir / "rollout_info.jsonl"
    curves = [json.loads(line) for line in rollout_file.read_text().splitlines()] if rollout_file.exists() else []
    final = {split: dict((summary.get(split) or {}).get("after") or {}) for split in SPLITS}
    return RunRecord(run_dir, config["datapool"]["id"], config["alg"]["id"], _variant(run_dir), int(config["seed"]),
                     final, curves)


def find_runs(root: Path) -> List[RunRecord]:
    """Every finished run under ``root`` (unfinished folders have no ``run_complete.json`` and are skipped)."""
    return [read_run(marker.parent) for marker in sorted(root.rglob("run_complete.json"))]


def aggregate(runs: List[RunRecord]) -> List[ResultRow]:
    """Group runs by (task, algorithm, variant) and average each final metric over the seeds."""
    groups: Dict[Tuple[str, str, str], List[RunRecord]] = defaultdict(list)
    for run in runs:
        groups[(run.task, run.algorithm, run.variant)].append(run)
    rows = []
    for (task, algorithm, variant), members in sorted(groups.items()):
        values: Dict[Tuple[str, str], List[float]] = defaultdict(list)
        for run in members:
            for split, metrics in run.final.items():
                for name, value in metrics.items():
                    values[(split, name)].append(float(value))
        scores = {key: (statistics.mean(v), statistics.stdev(v) if len(v) > 1 else 0.0)
                  for key, v in sorted(values.items())}
        rows.append(ResultRow(task, algorithm, variant, sorted(r.seed for r in members), scores))
    return rows


def markdown_table(rows: List[ResultRow], split: str = "test", digits: int = 3) -> str:
    """One line per (task, algorithm, variant); one column per metric of ``split``, as ``mean ± std``."""
    metrics = sorted({name for row in rows for (s, name) in row.scores if s == split})
    header = ["task", "algorithm", "variant", "seeds", *metrics]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row.task, row.algorithm, row.variant or "-", str(len(row.seeds))]
        for metric in metrics:
            mean_std = row.scores.get((split, metric))
            cells.append(f"{mean_std[0]:.{digits}f} ± {mean_std[1]:.{digits}f}" if mean_std else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_csv(rows: List[ResultRow], path: Path) -> None:
    """Long format: one line per (task, algorithm, variant, split, metric)."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["task", "algorithm", "variant", "split", "metric", "mean", "std", "n_seeds", "seeds"])
        for row in rows:
            for (split, metric), (mean, std) in row.scores.items():
                writer.writerow([row.task, row.algorithm, row.variant, split, metric, repr(mean), repr(std),
                                 len(row.seeds), " ".join(map(str, row.seeds))])


def _pyplot() -> Any:
    """matplotlib's pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt: Any, figure: Any, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def plot_curves(runs: List[RunRecord], out_dir: Path) -> List[Path]:
    """Per task: reward and KL over iterations, one line per run."""
    plt = _pyplot()
    paths = []
    for task in sorted({r.task for r in runs}):
        figure, (reward_ax, kl_ax) = plt.subplots(1, 2, figsize=(11, 4))
        for run in (r for r in runs if r.task == task and r.curves):
            iterations = [c["iteration"] for c in run.curves]
            label = f"{run.algorithm}{' ' + run.variant if run.variant else ''} seed {run.seed}"
            reward_ax.plot(iterations, [c.get("rollout_info/ep_rew") for c in run.curves], label=label)
            kl_ax.plot(iterations, [c.get("rollout_info/kl_div_mean") for c in run.curves], label=label)
        reward_ax.set(title=f"{task}: episode reward", xlabel="iteration", ylabel="rollout_info/ep_rew")
        kl_ax.set(title=f"{task}: KL to the reference", xlabel="iteration", ylabel="rollout_info/kl_div_mean")
        reward_ax.legend(fontsize="x-small")
        paths.append(_save(plt, figure, out_dir / f"curves_{task}.png"))
    return paths


def plot_metric_bars(rows: List[ResultRow], out_dir: Path, split: str = "test") -> List[Path]:
    """Per task: one group of bars per metric, one bar per algorithm (error bar = std over seeds)."""
    plt = _pyplot()
    paths = []
    for task in sorted({r.task for r in rows}):
        members = [r for r in rows if r.task == task]
        metrics = sorted({name for r in members for (s, name) in r.scores if s == split})
        if not metrics:
            continue
        width = 0.8 / len(members)
        figure, axis = plt.subplots(figsize=(max(5, 2 * len(metrics) + 2), 4))
        for ix, row in enumerate(members):
            means = [row.scores.get((split, m), (float("nan"), 0.0))[0] for m in metrics]
            stds = [row.scores.get((split, m), (0.0, 0.0))[1] for m in metrics]
            positions = [m + ix * width for m in range(len(metrics))]
            axis.bar(positions, means, width, yerr=stds, capsize=3,
                     label=f"{row.algorithm}{' ' + row.variant if row.variant else ''}")
        axis.set_xticks([m + 0.4 - width / 2 for m in range(len(metrics))], metrics, fontsize="small")
        axis.set(title=f"{task}: {split} metrics (mean ± std over seeds)")
        axis.legend(fontsize="small")
        paths.append(_save(plt, figure, out_dir / f"metrics_{task}.png"))
    return paths


def write_report(runs_dir: Path, out_dir: Path) -> Dict[str, Any]:
    """Tables (Markdown + CSV) and plots for every finished run under ``runs_dir``."""
    runs = find_runs(runs_dir)
    if not runs:
        raise FileNotFoundError(f"no finished runs (folders with run_complete.json) under {runs_dir}")
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = aggregate(runs)
    markdown = "\n\n".join(f"## {split} split\n\n{markdown_table(rows, split)}" for split in SPLITS)
    (out_dir / "results.md").write_text(f"# Results of {len(runs)} runs under {runs_dir}\n\n{markdown}\n")
    write_csv(rows, out_dir / "results.csv")
    plots = plot_curves(runs, out_dir) + plot_metric_bars(rows, out_dir)
    return {"runs": len(runs), "rows": rows, "markdown": markdown, "plots": plots}
