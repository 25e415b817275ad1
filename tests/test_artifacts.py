"""Crash-safe run artifacts: JSON-lines logs with rollback, and atomic JSON writes."""
from __future__ import annotations

import json
from pathlib import Path
from typing import List

from rl4lms.training.artifacts import JsonlLog, write_json_atomic

TORN = '{"iteration": 6, "loss": 0.'


def _archived_lines(directory: Path) -> List[str]:
    archive = directory / "superseded"
    lines: List[str] = []
    for path in sorted(archive.glob("*.jsonl")):
        lines += path.read_text().splitlines()
    return lines


def test_append_and_records(tmp_path: Path) -> None:
    log = JsonlLog(tmp_path / "log.jsonl")
    assert log.records() == []
    log.append({"iteration": 1, "loss": 0.5})
    log.append({"iteration": 2, "loss": 0.25, "name": "x"})
    assert log.records() == [{"iteration": 1, "loss": 0.5}, {"iteration": 2, "loss": 0.25, "name": "x"}]
    # One complete JSON object per line, newline-terminated.
    text = (tmp_path / "log.jsonl").read_text()
    assert text.endswith("\n")
    assert [json.loads(line) for line in text.splitlines()] == log.records()


def test_append_serialises_numpy_and_torch_scalars(tmp_path: Path) -> None:
    import numpy as np
    import torch

    log = JsonlLog(tmp_path / "log.jsonl")
    log.append({"iteration": 1, "a": np.float32(0.5), "b": torch.tensor(2.0)})
    assert log.records() == [{"iteration": 1, "a": 0.5, "b": 2.0}]


def test_records_skip_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    log = JsonlLog(path)
    log.append({"iteration": 1})
    with open(path, "a") as handle:
        handle.write(TORN)
    assert log.records() == [{"iteration": 1}]


def test_rollback_moves_newer_records_and_torn_line(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    log = JsonlLog(path)
    for iteration in range(1, 6):
        log.append({"iteration": iteration, "value": iteration * 10})
    with open(path, "a") as handle:
        handle.write(TORN)  # the process died while writing iteration 6
    original_text = path.read_text()
    original_complete = original_text.splitlines()[:-1]
    assert len(original_complete) == 5

    moved = log.rollback(keep_up_to=3)
    # iterations 4 and 5, plus the torn line
    assert moved == 3
    assert log.records() == [{"iteration": i, "value": i * 10} for i in (1, 2, 3)]
    main_text = path.read_text()
    assert main_text.endswith("\n")
    for line in main_text.splitlines():
        json.loads(line)  # every line of the main file is valid JSON

    archived = _archived_lines(tmp_path)
    assert archived == [original_complete[3], original_complete[4], TORN]
    assert [json.loads(line)["iteration"] for line in archived[:2]] == [4, 5]
    # Nothing lost: kept + archived == the original complete lines + the torn one.
    kept = main_text.splitlines()
    assert sorted(kept + archived) == sorted(original_complete + [TORN])
    assert len(kept) + len(archived) == len(original_text.splitlines())
    # No temporary file left behind.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log.jsonl", "superseded"]


def test_rollback_torn_only(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    log = JsonlLog(path)
    log.append({"iteration": 1})
    log.append({"iteration": 2})
    with open(path, "a") as handle:
        handle.write(TORN)
    assert log.rollback(keep_up_to=10) == 1
    assert log.records() == [{"iteration": 1}, {"iteration": 2}]
    assert _archived_lines(tmp_path) == [TORN]
    # Appending after the rollback produces a clean file again.
    log.append({"iteration": 3})
    assert [r["iteration"] for r in log.records()] == [1, 2, 3]
    assert len(path.read_text().splitlines()) == 3


def test_rollback_unterminated_but_valid_last_line_is_archived(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    path.write_text('{"iteration": 1}\n{"iteration": 2}')  # the last write lost its newline
    log = JsonlLog(path)
    assert log.rollback(keep_up_to=5) == 1
    assert path.read_text() == '{"iteration": 1}\n'
    assert _archived_lines(tmp_path) == ['{"iteration": 2}']


def test_rollback_nothing_to_do(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    log = JsonlLog(path)
    assert log.rollback(keep_up_to=0) == 0  # missing file
    log.append({"iteration": 1})
    log.append({"iteration": 2})
    before = path.read_text()
    assert log.rollback(keep_up_to=2) == 0
    assert path.read_text() == before
    assert not (tmp_path / "superseded").exists()


def test_rollback_by_epoch_key_and_repeated(tmp_path: Path) -> None:
    path = tmp_path / "eval.jsonl"
    log = JsonlLog(path, key="epoch")
    for epoch in range(4):
        log.append({"epoch": epoch, "score": epoch / 4})
    assert log.rollback(keep_up_to=2) == 1
    assert [r["epoch"] for r in log.records()] == [0, 1, 2]
    log.append({"epoch": 3, "score": 0.9})  # the re-run writes epoch 3 again
    assert log.rollback(keep_up_to=0) == 3
    assert [r["epoch"] for r in log.records()] == [0]
    # Both rollbacks' records are archived (possibly in one file when they happen in the same second).
    archived = [json.loads(line) for line in _archived_lines(tmp_path)]
    assert sorted((r["epoch"], r["score"]) for r in archived) == [(1, 0.25), (2, 0.5), (3, 0.75), (3, 0.9)]


def test_write_json_atomic(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    write_json_atomic(target, {"iteration": 3, "path": tmp_path, "values": [1, 2.5]})
    assert json.loads(target.read_text()) == {"iteration": 3, "path": str(tmp_path), "values": [1, 2.5]}
    write_json_atomic(target, {"iteration": 4})
    assert json.loads(target.read_text()) == {"iteration": 4}
    # Only the target remains: no temporary file left behind.
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_rollback_archives_json_that_is_not_a_record(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    path.write_text('{"iteration": 1}\n123\n{"iteration": 2}\n')
    assert JsonlLog(path).rollback(5) == 1
    assert JsonlLog(path).records() == [{"iteration": 1}, {"iteration": 2}]
    archived = next((tmp_path / "superseded").glob("log.*.jsonl")).read_text()
    assert archived == "123\n"
