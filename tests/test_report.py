"""Report aggregation on made-up run folders: exact means/stds, Markdown, CSV and plots."""
from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from rl4lms.sweep.report import aggregate, find_runs, markdown_table, write_report


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
