"""Statistics across tasks and seeds for a report: per algorithm the IQM and the mean of normalized
final scores, with 95% stratified bootstrap intervals, the probability of improvement of each pair,
and performance profiles (see ``rl4lms.sweep.statistics``)."""
from __future__ import annotations

import itertools
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from rl4lms.sweep import statistics
from rl4lms.sweep.run_records import RunRecord

MIN_SEEDS = 3  # fewer runs per task and the bootstrap has too little to resample: no interval
PROFILE_THRESHOLDS = np.linspace(0.0, 1.0, 41)


@dataclass
class ScoreTable:
    """Final scores normalized per task, a ``(runs, tasks)`` array per algorithm label, over the tasks
    that every algorithm ran; ``notes`` says what was left out and why."""

    split: str
    tasks: List[str]
    metrics: Dict[str, str]  # task -> the metric that scores it
    scores: Dict[str, np.ndarray]
    notes: List[str] = field(default_factory=list)


@dataclass
class Estimate:
    """A point estimate and its 95% interval (None when there are too few seeds for one)."""

    point: float
    interval: Optional[Tuple[float, float]]

    def text(self, digits: int = 3) -> str:
        if self.interval is None:
            return f"{self.point:.{digits}f} (too few seeds for an interval)"
        return f"{self.point:.{digits}f} [{self.interval[0]:.{digits}f}, {self.interval[1]:.{digits}f}]"


@dataclass
class AggregateStats:
    """Everything the report prints and draws about the comparison of algorithms."""

    table: ScoreTable
    aggregates: Dict[str, Dict[str, Estimate]]  # label -> {"IQM": ..., "mean": ...}
    improvement: Dict[Tuple[str, str], Estimate]  # (X, Y) -> P(X > Y)
    profiles: Dict[str, Tuple[np.ndarray, Optional[np.ndarray]]]  # label -> (fractions, (2, thresholds) or None)
    thresholds: np.ndarray = field(default_factory=lambda: PROFILE_THRESHOLDS)


def _metric_of(task_runs: List[RunRecord], split: str, chosen: Optional[str]) -> Optional[str]:
    """The task's score metric: the one asked for, else the first metric its runs report (the
    config's first metric, by convention the task's main one)."""
    if chosen:
        return chosen
    for run in task_runs:
        if run.final.get(split):
            return next(iter(run.final[split]))
    return None


def score_table(runs: Sequence[RunRecord], split: str = "test",
                score_metrics: Optional[Dict[str, str]] = None) -> ScoreTable:
    """Collect each run's final score on its task's metric, keep the tasks every algorithm ran and,
    per algorithm, as many seeds as it has on all of them; min-max normalize each task over these runs."""
    by_task: Dict[str, List[RunRecord]] = defaultdict(list)
    for run in runs:
        by_task[run.task].append(run)
    notes, metrics = [], {}
    values: Dict[str, Dict[str, Dict[int, float]]] = defaultdict(lambda: defaultdict(dict))  # label, task, seed
    for task, members in sorted(by_task.items()):
        metric = _metric_of(members, split, (score_metrics or {}).get(task))
        if metric is None:
            notes.append(f"{task}: no {split} metrics; left out")
            continue
        metrics[task] = metric
        for run in members:
            if metric in run.final.get(split, {}):
                values[run.label][task][run.seed] = float(run.final[split][metric])
            else:
                notes.append(f"{run.path.name}: no {split} metric '{metric}'; left out")
    labels = sorted(values)
    tasks = [t for t in metrics if all(t in values[label] for label in labels)]
    for task in metrics:
        if task not in tasks:
            notes.append(f"{task}: not run by every algorithm ({', '.join(l for l in labels if task not in values[l])} "
                         f"missing); left out of the aggregate")
    scores = {}
    for label in labels:
        seeds = [sorted(values[label][task]) for task in tasks]
        n_runs = min((len(s) for s in seeds), default=0)
        if any(len(s) > n_runs for s in seeds):
            notes.append(f"{label}: {n_runs} seeds on every task; the extra seeds of some tasks are left out")
        if tasks and n_runs:
            scores[label] = np.array([[values[label][task][s[i]] for task, s in zip(tasks, seeds)]
                                      for i in range(n_runs)])
    for column, task in enumerate(tasks):
        column_values = np.concatenate([s[:, column] for s in scores.values()])
        low, high = column_values.min(), column_values.max()
        for array in scores.values():
            array[:, column] = (array[:, column] - low) / (high - low) if high > low else 0.0
    return ScoreTable(split, tasks, {t: metrics[t] for t in tasks}, scores, notes)


def _estimates(scores: Dict[str, Any], statistic: Any, reps: int, seed: int,
               eligible: Sequence[str]) -> Dict[str, Estimate]:
    """Point estimates for every key, intervals for the ``eligible`` ones (in one bootstrap, in order)."""
    _, intervals = statistics.interval_estimates({k: scores[k] for k in eligible}, statistic, reps, seed=seed)
    return {key: Estimate(float(statistic(*(value if isinstance(value, tuple) else (value,)))),
                          (float(intervals[key][0]), float(intervals[key][1])) if key in intervals else None)
            for key, value in scores.items()}


def compare(table: ScoreTable, reps: int = statistics.REPS, profile_reps: int = statistics.PROFILE_REPS,
            seed: int = statistics.SEED) -> AggregateStats:
    """IQM and mean per algorithm, probability of improvement per pair, performance profiles."""
    eligible = [label for label, s in table.scores.items() if s.shape[0] >= MIN_SEEDS]
    by_statistic = {name: _estimates(table.scores, function, reps, seed, eligible)
                    for name, function in (("IQM", statistics.iqm), ("mean", statistics.mean))}
    aggregates = {label: {name: found[label] for name, found in by_statistic.items()} for label in table.scores}
    pairs = {(x, y): (table.scores[x], table.scores[y]) for x, y in itertools.combinations(table.scores, 2)}
    improvement = _estimates(pairs, statistics.probability_of_improvement, reps, seed,
                             [p for p in pairs if p[0] in eligible and p[1] in eligible])

    def profile(scores: np.ndarray) -> np.ndarray:
        return statistics.performance_profile(scores, PROFILE_THRESHOLDS)

    _, profile_intervals = statistics.interval_estimates({k: table.scores[k] for k in eligible}, profile,
                                                         profile_reps, seed=seed)
    profiles = {label: (profile(s), profile_intervals.get(label)) for label, s in table.scores.items()}
    return AggregateStats(table, aggregates, improvement, profiles)


def markdown(stats: AggregateStats) -> str:
    """The aggregate section of ``results.md``."""
    table = stats.table
    if not table.scores:
        return "\n".join([f"## Aggregate over tasks ({table.split} split)", "", "No task was run by every algorithm.",
                          *[f"- {note}" for note in table.notes]])
    lines = [f"## Aggregate over tasks ({table.split} split)", "",
             f"Each task is scored by one metric, min-max normalized over the runs below (0 = the lowest run, "
             f"1 = the highest). IQM = interquartile mean of all run x task scores. Brackets: 95% stratified "
             f"bootstrap confidence intervals (needs >= {MIN_SEEDS} seeds).", "",
             "| task | metric |", "|---|---|", *[f"| {t} | {table.metrics[t]} |" for t in table.tasks], "",
             "| algorithm | seeds x tasks | IQM | mean |", "|---|---|---|---|"]
    for label, found in stats.aggregates.items():
        shape = table.scores[label].shape
        lines.append(f"| {label} | {shape[0]} x {shape[1]} | {found['IQM'].text()} | {found['mean'].text()} |")
    if stats.improvement:
        lines += ["", "Probability of improvement: the chance that a run of X beats a run of Y on a task, averaged "
                  "over tasks (0.5 = no difference).", "", "| X | Y | P(X > Y) |", "|---|---|---|"]
        lines += [f"| {x} | {y} | {estimate.text()} |" for (x, y), estimate in stats.improvement.items()]
    if len(table.tasks) < 2:
        lines += ["", f"Only {len(table.tasks)} task: the aggregate is that task's score, not a benchmark-wide one."]
    if table.notes:
        lines += ["", *[f"- {note}" for note in table.notes]]
    return "\n".join(lines)


def as_json(stats: AggregateStats) -> Dict[str, Any]:
    """The same numbers for ``aggregate.json``."""

    def estimate(e: Estimate) -> Dict[str, Any]:
        return {"point": e.point, "interval": list(e.interval) if e.interval else None}

    return {
        "split": stats.table.split, "tasks": stats.table.tasks, "metrics": stats.table.metrics,
        "min_seeds_for_interval": MIN_SEEDS, "notes": stats.table.notes,
        "scores": {label: s.tolist() for label, s in stats.table.scores.items()},
        "aggregates": {label: {name: estimate(e) for name, e in found.items()}
                       for label, found in stats.aggregates.items()},
        "probability_of_improvement": [{"x": x, "y": y, **estimate(e)} for (x, y), e in stats.improvement.items()],
        "profile_thresholds": stats.thresholds.tolist(),
        "profiles": {label: {"fraction": f.tolist(), "interval": i.tolist() if i is not None else None}
                     for label, (f, i) in stats.profiles.items()},
    }
