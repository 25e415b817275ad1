"""GRUE-style results from run folders: task x algorithm tables (mean ± std over seeds), statistics
across tasks (IQM, probability of improvement, with bootstrap intervals) and plots."""
from __future__ import annotations

import csv
import json
import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from rl4lms.sweep import aggregate as across_tasks
from rl4lms.sweep.run_records import SPLITS, RunRecord, find_runs
from rl4lms.sweep.statistics import PROFILE_REPS, REPS, interval_estimates

CURVES = (("rollout_info/ep_rew", "episode reward"), ("rollout_info/kl_div_mean", "KL to the reference"))


@dataclass
class ResultRow:
    """Mean and standard deviation over seeds of every final metric of one (task, algorithm, variant)."""

    task: str
    algorithm: str
    variant: str
    seeds: List[int]
    scores: Dict[Tuple[str, str], Tuple[float, float]]  # (split, metric) -> (mean, std)


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


def curve_band(runs: List[RunRecord], key: str, reps: int = PROFILE_REPS
                ) -> Optional[Tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]]:
    """Iterations, mean over seeds and its 95% stratified bootstrap band (None with too few seeds) of
    ``key`` at the iterations every run logged; None when they share none."""
    logged = [{c["iteration"]: c[key] for c in run.curves if c.get(key) is not None} for run in runs]
    iterations = sorted(set.intersection(*(set(points) for points in logged))) if logged else []
    if not iterations:
        return None
    values = np.array([[points[i] for i in iterations] for points in logged], dtype=float)  # (seeds, iterations)

    def seed_mean(scores: np.ndarray) -> np.ndarray:
        return scores.mean(axis=-2)

    band = None
    if len(runs) >= across_tasks.MIN_SEEDS:
        band = interval_estimates({"curve": values}, seed_mean, reps)[1]["curve"]
    return np.array(iterations), seed_mean(values), band


def plot_curves(runs: List[RunRecord], out_dir: Path) -> List[Path]:
    """Per task: reward and KL over iterations, per algorithm the mean over seeds with a 95% bootstrap
    band (drawn from 3 seeds on)."""
    plt = _pyplot()
    paths = []
    for task in sorted({r.task for r in runs}):
        figure, axes = plt.subplots(1, len(CURVES), figsize=(11, 4))
        members = [r for r in runs if r.task == task and r.curves]
        for label in sorted({r.label for r in members}):
            seeds = [r for r in members if r.label == label]
            for axis, (key, _) in zip(axes, CURVES):
                curve = curve_band(seeds, key)
                if curve is None:
                    continue
                iterations, means, band = curve
                single = len(iterations) == 1  # a point, not a line: a marker and an error bar
                line, = axis.plot(iterations, means, marker="o" if single else None,
                                  label=f"{label} ({len(seeds)} seeds)")
                if band is not None and single:
                    axis.errorbar(iterations, means, yerr=[means - band[0], band[1] - means], color=line.get_color(),
                                  capsize=4)
                elif band is not None:
                    axis.fill_between(iterations, band[0], band[1], color=line.get_color(), alpha=0.25)
        for axis, (key, title) in zip(axes, CURVES):
            axis.set(title=f"{task}: {title}", xlabel="iteration", ylabel=key)
        axes[0].legend(fontsize="x-small")
        paths.append(_save(plt, figure, out_dir / f"curves_{task}.png"))
    return paths


def plot_performance_profiles(stats: across_tasks.AggregateStats, out_dir: Path) -> List[Path]:
    """The fraction of runs whose normalized score exceeds each threshold, with 95% bootstrap bands."""
    if not stats.table.scores:
        return []
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6, 4))
    for label, (fractions, band) in stats.profiles.items():
        line, = axis.plot(stats.thresholds, fractions, label=label)
        if band is not None:
            axis.fill_between(stats.thresholds, band[0], band[1], color=line.get_color(), alpha=0.25)
    axis.set(title=f"Performance profiles over {len(stats.table.tasks)} tasks ({stats.table.split})",
             xlabel="normalized score τ", ylabel="fraction of runs with score > τ", ylim=(0, 1.02))
    axis.legend(fontsize="small")
    return [_save(plt, figure, out_dir / "performance_profiles.png")]


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


def write_report(runs_dir: Path, out_dir: Path, score_metrics: Optional[Dict[str, str]] = None,
                 reps: int = REPS) -> Dict[str, Any]:
    """Tables (Markdown + CSV), aggregate statistics (Markdown + ``aggregate.json``) and plots for every
    finished run under ``runs_dir``; ``score_metrics`` picks a task's score metric (default: its first)."""
    runs = find_runs(runs_dir)
    if not runs:
        raise FileNotFoundError(f"no finished runs (folders with run_complete.json) under {runs_dir}")
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = aggregate(runs)
    stats = across_tasks.compare(across_tasks.score_table(runs, "test", score_metrics), reps, min(reps, PROFILE_REPS))
    markdown = "\n\n".join([*(f"## {split} split\n\n{markdown_table(rows, split)}" for split in SPLITS),
                             across_tasks.markdown(stats)])
    (out_dir / "results.md").write_text(f"# Results of {len(runs)} runs under {runs_dir}\n\n{markdown}\n")
    write_csv(rows, out_dir / "results.csv")
    (out_dir / "aggregate.json").write_text(json.dumps(across_tasks.as_json(stats), indent=2))
    plots = plot_curves(runs, out_dir) + plot_metric_bars(rows, out_dir) + plot_performance_profiles(stats, out_dir)
    return {"runs": len(runs), "rows": rows, "stats": stats, "markdown": markdown, "plots": plots}
