"""Aggregate statistics over tasks and seeds (Agarwal et al., 2021, "Deep RL at the Edge of the
Statistical Precipice"): interquartile mean, probability of improvement, performance profiles, each
with stratified bootstrap confidence intervals.

The estimators are those of the ``rliable`` library, written on numpy and vectorized over bootstrap
replicates. ``rliable`` itself is not a dependency: its last release pins ``arch`` < 8, which fails
at import with pandas 3. The bootstrap draws the same indices as rliable's (a legacy
``RandomState(seed)``, one ``runs x tasks`` draw per replicate and per score array, in order), so
for the same seed the intervals equal rliable's after ``np.random.seed(seed)``; tests/test_report.py
checks that against rliable run in a side environment.

Every score array is ``(runs, tasks)``; the statistics also take leading replicate axes.
"""
from __future__ import annotations

from typing import Callable, Dict, Mapping, Sequence, Tuple, Union

import numpy as np

Scores = Union[np.ndarray, Tuple[np.ndarray, np.ndarray]]
CONFIDENCE = 0.95
REPS = 50_000  # rliable's default for aggregate metrics
PROFILE_REPS = 2_000  # rliable's default for performance profiles
SEED = 0


def iqm(scores: np.ndarray) -> np.ndarray:
    """Interquartile mean: the mean of the middle 50% of all run x task scores (25% trimmed mean)."""
    flat = np.sort(scores.reshape(*scores.shape[:-2], -1), axis=-1)
    cut = int(0.25 * flat.shape[-1])
    return flat[..., cut:flat.shape[-1] - cut].mean(axis=-1)


def mean(scores: np.ndarray) -> np.ndarray:
    """The mean over tasks of each task's mean over runs."""
    return scores.mean(axis=-2).mean(axis=-1)


def probability_of_improvement(scores_x: np.ndarray, scores_y: np.ndarray) -> np.ndarray:
    """P(X > Y): per task, the chance that a run of X scores above a run of Y (ties count half, the
    Mann-Whitney U statistic over nx * ny), averaged over tasks."""
    x, y = scores_x[..., :, None, :], scores_y[..., None, :, :]
    per_task = ((x > y).sum(axis=(-3, -2)) + 0.5 * (x == y).sum(axis=(-3, -2))) / (x.shape[-3] * y.shape[-2])
    return per_task.mean(axis=-1)


def performance_profile(scores: np.ndarray, thresholds: Sequence[float]) -> np.ndarray:
    """The fraction of run x task scores above each threshold (the score distribution's tail)."""
    flat = scores.reshape(*scores.shape[:-2], -1)
    return (flat[..., None, :] > np.asarray(thresholds)[:, None]).mean(axis=-1)


def bootstrap_replicates(scores: Scores, statistic: Callable[..., np.ndarray], reps: int,
                         rng: np.random.RandomState) -> np.ndarray:
    """``statistic`` on ``reps`` stratified resamples of ``scores``: within each task (column), runs
    are drawn with replacement. A pair of arrays is resampled independently, each replicate drawing
    the first array's indices, then the second's."""
    arrays = scores if isinstance(scores, tuple) else (scores,)
    sizes = [a.shape[0] * a.shape[1] for a in arrays]
    bounds = np.concatenate([np.full(size, a.shape[0]) for a, size in zip(arrays, sizes)])
    draws = rng.randint(0, np.broadcast_to(bounds, (reps, bounds.size)))
    resampled, offset = [], 0
    for array, size in zip(arrays, sizes):
        indices = draws[:, offset:offset + size].reshape(reps, *array.shape)
        resampled.append(array[indices, np.arange(array.shape[1])])
        offset += size
    return statistic(*resampled)


def interval_estimates(score_dict: Mapping[str, Scores], statistic: Callable[..., np.ndarray], reps: int = REPS,
                       confidence: float = CONFIDENCE, seed: int = SEED
                       ) -> Tuple[Dict[str, np.ndarray], Dict[str, np.ndarray]]:
    """Point estimates and percentile bootstrap intervals (``(2, ...)``: lower row, upper row) of
    ``statistic`` for each entry of ``score_dict``, drawing from one ``RandomState(seed)`` in order."""
    rng = np.random.RandomState(seed)
    points, intervals = {}, {}
    alpha = 100 * (1 - confidence) / 2
    for key, scores in score_dict.items():
        arrays = scores if isinstance(scores, tuple) else (scores,)
        points[key] = statistic(*arrays)
        replicates = bootstrap_replicates(scores, statistic, reps, rng)
        intervals[key] = np.percentile(replicates, [alpha, 100 - alpha], axis=0)
    return points, intervals
