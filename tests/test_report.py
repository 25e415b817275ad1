"""Report aggregation on made-up run folders: exact means/stds, Markdown, CSV and plots; the statistics
across tasks against rliable itself."""
from __future__ import annotations

import csv
import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, skip_unless_ci
from rl4lms.sweep.report import aggregate, curve_band, find_runs, markdown_table, write_report


def _fake_run(folder: Path, task: str, alg: str, seed: int, test: dict, val: dict, rewards: list,
              finished: bool = True, grid_point: dict = None) -> None:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"datapool": {"id": task}, "alg": {"id": alg}, "seed": seed}))
    (folder / "rollout_info.jsonl").write_text("".join(
        json.dumps({"iteration": i + 1, "rollout_info/ep_rew": r, "rollout_info/kl_div_mean": 0.1 * i}) + "\n"
        for i, r in enumerate(rewards)))
    if grid_point is not None:
        (folder / "sweep_run.json").write_text(json.dumps({"grid_point": grid_point}))
    if finished:
        (folder / "run_complete.json").write_text(json.dumps({
            "test": {"before": {k: 0.0 for k in test}, "after": test},
            "val": {"before": {k: 0.0 for k in val}, "after": val}, "iterations": len(rewards)}))


def _make_runs(root: Path) -> None:
    _fake_run(root / "a", "imdb", "ppo", 0, {"m/score": 0.2, "m/len": 10.0}, {"m/score": 0.1}, [0.1, 0.2])
    _fake_run(root / "b", "imdb", "ppo", 1, {"m/score": 0.4, "m/len": 14.0}, {"m/score": 0.3}, [0.2, 0.3])
    _fake_run(root / "nested" / "c", "imdb", "a2c", 0, {"m/score": 0.5, "m/len": 12.0}, {"m/score": 0.6}, [0.4])
    _fake_run(root / "d", "cnn", "ppo", 3, {"rouge": 0.25}, {}, [0.0, 0.5, 0.7], grid_point={"seed": 3, "alg.kl_div.coeff": 0.1})
    _fake_run(root / "unfinished", "imdb", "ppo", 2, {"m/score": 99.0}, {}, [1.0], finished=False)


def test_aggregation_averages_final_metrics_over_seeds(tmp_path: Path) -> None:
    _make_runs(tmp_path)
    runs = find_runs(tmp_path)
    assert len(runs) == 4  # the unfinished run is left out
    rows = {(r.task, r.algorithm, r.variant): r for r in aggregate(runs)}
    ppo = rows[("imdb", "ppo", "")]
    assert ppo.seeds == [0, 1]
    mean, std = ppo.scores[("test", "m/score")]
    assert math.isclose(mean, 0.3) and math.isclose(std, math.sqrt(0.02))  # sample std of 0.2 and 0.4
    assert ppo.scores[("test", "m/len")] == (12.0, math.sqrt(8.0))
    assert rows[("imdb", "a2c", "")].scores[("val", "m/score")] == (0.6, 0.0)
    assert rows[("cnn", "ppo", "alg.kl_div.coeff=0.1")].scores[("test", "rouge")] == (0.25, 0.0)

    table = markdown_table(aggregate(runs), "test")
    assert "| task | algorithm | variant | seeds | m/len | m/score | rouge |" in table
    assert "| imdb | ppo | - | 2 | 12.000 ± 2.828 | 0.300 ± 0.141 | - |" in table
    assert "| cnn | ppo | alg.kl_div.coeff=0.1 | 1 | - | - | 0.250 ± 0.000 |" in table


@pytest.mark.slow
def test_report_script_writes_tables_and_plots(tmp_path: Path) -> None:
    runs, out = tmp_path / "runs", tmp_path / "out"
    _make_runs(runs)
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "report.py"), "--runs_dir", str(runs),
                             "--output_dir", str(out)], capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "0.300 ± 0.141" in result.stdout and "0.300 ± 0.141" in (out / "results.md").read_text()
    with open(out / "results.csv") as handle:
        lines = list(csv.DictReader(handle))
    score = next(l for l in lines if l["task"] == "imdb" and l["algorithm"] == "ppo" and l["split"] == "test"
                 and l["metric"] == "m/score")
    assert math.isclose(float(score["mean"]), 0.3) and score["n_seeds"] == "2" and score["seeds"] == "0 1"
    for name in ("curves_imdb.png", "curves_cnn.png", "metrics_imdb.png", "metrics_cnn.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_no_finished_runs_is_a_clear_error(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "report.py"), "--runs_dir", str(tmp_path)],
                            capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert result.returncode == 2 and "no finished runs" in result.stderr


RLIABLE_PYTHON = os.environ.get("RL4LMS_RLIABLE_PYTHON")
REPS = 500  # resamples (rliable runs them one by one, slowly); equality holds for any number


def _make_benchmark(root: Path) -> tuple:
    """3 algorithms x 3 tasks x 4 seeds, plus an algorithm with 2 seeds; returns the raw scores by
    (algorithm, task) -> per-seed values of each task's first metric, and the reward curves by
    (algorithm, task) -> per-seed lists of rewards over iterations."""
    rng = random.Random(7)
    raw, curves = {}, {}
    for task, metric in (("imdb", "semantic/score"), ("cnn", "lexical/rouge2"), ("common_gen", "lexical/bleu")):
        for alg, seeds, shift in (("ppo", 4, 0.1), ("nlpo", 4, 0.15), ("grpo", 4, 0.0), ("a2c", 2, -0.1)):
            raw[(alg, task)] = [round(rng.random() * 0.5 + shift, 3) for _ in range(seeds)]
            curves[(alg, task)] = [[round(rng.random() + 0.1 * i, 3) for i in range(5)] for _ in range(seeds)]
            for seed, (value, curve) in enumerate(zip(raw[(alg, task)], curves[(alg, task)])):
                _fake_run(root / f"{task}_{alg}_{seed}", task, alg, seed, {metric: value, "diversity/len": 1.0 + seed},
                          {metric: value}, curve)
    return raw, curves


def _normalized(raw: dict, alg: str, tasks: list) -> list:
    columns = []
    for task in tasks:
        task_values = [v for (a, t), values in raw.items() if t == task for v in values]
        low, high = min(task_values), max(task_values)
        columns.append([(v - low) / (high - low) for v in raw[(alg, task)]])
    return [list(row) for row in zip(*columns)]


@pytest.mark.slow
def test_aggregate_statistics_equal_rliable_on_hand_made_runs(tmp_path: Path) -> None:
    if not RLIABLE_PYTHON:
        skip_unless_ci("needs RL4LMS_RLIABLE_PYTHON, a Python with rliable 1.2, arch 7.2 and pandas<3 (.ci/run makes one)")
    raw, curves = _make_benchmark(tmp_path / "runs")
    report = write_report(tmp_path / "runs", tmp_path / "out", reps=REPS)
    result = json.loads((tmp_path / "out" / "aggregate.json").read_text())
    tasks = ["cnn", "common_gen", "imdb"]
    assert result["tasks"] == tasks and result["metrics"]["imdb"] == "semantic/score"
    for alg in ("ppo", "nlpo", "grpo", "a2c"):  # min-max over every run of the task
        assert np.allclose(result["scores"][alg], _normalized(raw, alg, tasks), rtol=1e-12, atol=0)

    labels = sorted(result["scores"])
    eligible = [label for label in labels if label != "a2c"]
    request = {"scores": result["scores"], "eligible": eligible, "seed": 0, "reps": REPS, "profile_reps": REPS,
               "pairs": [[p["x"], p["y"]] for p in result["probability_of_improvement"] if p["interval"] is not None],
               "thresholds": result["profile_thresholds"],
               "curves": {alg: curves[(alg, "imdb")] for alg in eligible}}
    reference = subprocess.run([RLIABLE_PYTHON, str(Path(__file__).with_name("rliable_reference.py"))],
                               input=json.dumps(request), capture_output=True, text=True, timeout=300)
    assert reference.returncode == 0, reference.stderr[-3000:]
    expected = json.loads(reference.stdout)
    for name in ("IQM", "mean"):
        for label in eligible:
            ours = result["aggregates"][label][name]
            assert [ours["point"], *ours["interval"]] == pytest.approx(expected[name][label], rel=1e-9, abs=1e-12)
        assert result["aggregates"]["a2c"][name]["interval"] is None  # 2 seeds: no interval
    for pair in result["probability_of_improvement"]:
        key = f"{pair['x']},{pair['y']}"
        if "a2c" in key:
            assert pair["interval"] is None
        else:
            assert [pair["point"], *pair["interval"]] == pytest.approx(expected["probability_of_improvement"][key],
                                                                       rel=1e-9, abs=1e-12)
    for label in eligible:
        assert result["profiles"][label]["fraction"] == expected["profiles"][label]["fraction"]
        assert np.allclose(result["profiles"][label]["interval"], expected["profiles"][label]["interval"], rtol=1e-9)

    imdb_runs = [run for run in find_runs(tmp_path / "runs") if run.task == "imdb"]
    for alg in eligible:  # the bands of the learning curves: per iteration, over seeds
        iterations, means, band = curve_band([r for r in imdb_runs if r.algorithm == alg], "rollout_info/ep_rew",
                                             reps=REPS)
        assert iterations.tolist() == [1, 2, 3, 4, 5]
        assert means.tolist() == pytest.approx(expected["curves"][alg]["mean"], rel=1e-12)
        assert np.allclose(band, expected["curves"][alg]["interval"], rtol=1e-9)
    assert curve_band([r for r in imdb_runs if r.algorithm == "a2c"], "rollout_info/ep_rew", reps=REPS)[2] is None

    text = (tmp_path / "out" / "results.md").read_text()
    ppo = result["aggregates"]["ppo"]["IQM"]
    assert f"| ppo | 4 x 3 | {ppo['point']:.3f} [{ppo['interval'][0]:.3f}, {ppo['interval'][1]:.3f}] |" in text
    assert "| a2c | 2 x 3 | " in text and "(too few seeds for an interval)" in text
    assert "| nlpo | ppo | " in text or "| grpo | nlpo | " in text
    for name in ("performance_profiles.png", "curves_imdb.png"):
        assert (tmp_path / "out" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report["stats"].table.tasks == tasks


def test_too_few_seeds_or_tasks_are_said_instead_of_intervals(tmp_path: Path) -> None:
    _fake_run(tmp_path / "a", "imdb", "ppo", 0, {"m/score": 0.2}, {}, [0.1, 0.2])
    _fake_run(tmp_path / "b", "imdb", "ppo", 1, {"m/score": 0.4}, {}, [0.2, 0.3])
    _fake_run(tmp_path / "c", "imdb", "a2c", 0, {"m/score": 0.5}, {}, [0.4])
    _fake_run(tmp_path / "d", "cnn", "ppo", 0, {"rouge": 0.25}, {}, [0.0, 0.5])
    text = write_report(tmp_path, tmp_path / "out", reps=REPS)["markdown"]
    assert "- cnn: not run by every algorithm (a2c missing); left out of the aggregate" in text
    assert "| imdb | m/score |" in text
    assert "| a2c | 1 x 1 | 1.000 (too few seeds for an interval) | 1.000 (too few seeds for an interval) |" in text
    assert "| ppo | 2 x 1 | 0.333 (too few seeds for an interval) |" in text
    assert "| a2c | ppo | 1.000 (too few seeds for an interval) |" in text
    assert "Only 1 task: the aggregate is that task's score" in text
