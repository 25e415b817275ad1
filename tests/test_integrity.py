"""Checksummed artifacts: damaged checkpoints and final models are found before use, in one line.

Also: a start that failed before training does not pin its config, and unreadable checkpoints
written before manifests get a reason and the checkpoint to resume from.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch

from conftest import REPO, write_small_config
from test_run_safety import _error_line, _run
from test_trainer_resume import _files
from rl4lms.errors import DamagedArtifactError
from rl4lms.training.checkpoint import STATE_FILE, newest_intact_checkpoint
from rl4lms.manifest import MANIFEST_FILE, verify_files

pytestmark = pytest.mark.slow  # each test works on a run trained through the command line


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 3-iteration run (checkpoints 2 and 3 kept); tests work on copies of it."""
    base = tmp_path_factory.mktemp("finished")
    config = write_small_config(base, n_iters=3, eval_every=3, save_every=1)
    assert _run(config, base, "run") == 0
    return base


def _copy(finished: Path, tmp_path: Path) -> Path:
    shutil.copytree(finished / "run", tmp_path / "run")
    shutil.copy(finished / "small.yml", tmp_path / "small.yml")
    return tmp_path / "small.yml"


def _flip(path: Path, offset: int, length: int = 1) -> None:
    data = bytearray(path.read_bytes())
    for ix in range(offset, min(offset + length, len(data))):
        data[ix] ^= 0xFF
    path.write_bytes(bytes(data))


def test_checkpoints_and_the_final_model_carry_content_hashes(finished: Path) -> None:
    run = finished / "run"
    checkpoint = run / "checkpoints" / "checkpoint_000003"
    manifest = json.loads((checkpoint / MANIFEST_FILE).read_text())
    state = (checkpoint / STATE_FILE).read_bytes()
    assert manifest["files"] == {STATE_FILE: {"bytes": len(state), "sha256": hashlib.sha256(state).hexdigest()}}
    model_files = {str(p.relative_to(run / "model")) for p in (run / "model").rglob("*") if p.is_file()}
    listed = json.loads((run / "model" / MANIFEST_FILE).read_text())["files"]
    assert set(listed) == model_files - {MANIFEST_FILE} and "model.safetensors" in listed
    integrity = json.loads((run / "run_complete.json").read_text())["integrity"]
    assert integrity["model_manifest_sha256"] == hashlib.sha256((run / "model" / MANIFEST_FILE).read_bytes()).hexdigest()
    assert verify_files(checkpoint) and verify_files(run / "model")


@pytest.mark.parametrize("where", ["start", "middle", "end"])
def test_a_flipped_byte_anywhere_in_a_loaded_file_is_detected(finished: Path, tmp_path: Path, where: str) -> None:
    for folder, name in (("checkpoints/checkpoint_000003", STATE_FILE), ("model", "model.safetensors")):
        copy = shutil.copytree(finished / "run" / folder, tmp_path / folder)
        size = (copy / name).stat().st_size
        _flip(copy / name, {"start": 0, "middle": size // 2, "end": size - 1}[where])
        with pytest.raises(DamagedArtifactError, match=f"{name} differs from what was written"):
            verify_files(copy, [name])


def test_damaged_newest_checkpoint_falls_back_to_the_previous_one(finished: Path, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture) -> None:
    config = _copy(finished, tmp_path)
    run = tmp_path / "run"
    shutil.rmtree(run / "model")
    (run / "run_complete.json").unlink()  # as if killed after the last checkpoint
    _flip(run / "checkpoints" / "checkpoint_000003" / STATE_FILE, 5000, 4096)  # 4 KB of flipped bytes
    capsys.readouterr()
    assert _run(config, tmp_path, "run") == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "is damaged" in line]
    assert len(warnings) == 1
    assert "checkpoint checkpoint_000003 is damaged" in warnings[0] and "resuming from checkpoint_000002" in warnings[0]
    assert (run / "checkpoints" / "damaged" / "checkpoint_000003" / STATE_FILE).exists()  # kept, not deleted
    # Iteration 3 was trained again from checkpoint 2: the run ends as the uninterrupted one did.
    for folder in ("checkpoints/checkpoint_000002", "checkpoints/checkpoint_000003", "model"):
        assert _files(run / folder) == _files(finished / "run" / folder), folder
    assert (run / "rollout_info.jsonl").read_bytes() == (finished / "run" / "rollout_info.jsonl").read_bytes()


def test_only_damaged_checkpoints_mean_starting_over(finished: Path, tmp_path: Path) -> None:
    folder = shutil.copytree(finished / "run" / "checkpoints", tmp_path / "checkpoints")
    for checkpoint in ("checkpoint_000002", "checkpoint_000003"):
        (folder / checkpoint / STATE_FILE).write_bytes(b"")
    lines: list = []
    assert newest_intact_checkpoint(folder, lines.append) is None
    assert len(lines) == 2 and "has 0 bytes where" in lines[1] and "starting from the first iteration" in lines[1]
    assert sorted(p.name for p in (folder / "damaged").iterdir()) == ["checkpoint_000002", "checkpoint_000003"]


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
def test_damaged_final_model_is_one_line_naming_the_file(finished: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture, damage: str) -> None:
    config = _copy(finished, tmp_path)
    run = tmp_path / "run"
    weights = run / "model" / "model.safetensors"
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:1000])
    elif damage == "flip":
        _flip(weights, 3000)
    else:
        weights.unlink()
    capsys.readouterr()
    assert _run(config, tmp_path, "run") == 2  # not "already complete"
    line = _error_line(capsys.readouterr().err)
    assert f"error: {weights}" in line and "rerun the same command to write the final model again" in line
    if damage == "truncate":
        # The advice works: the final model is written again from the last checkpoint, as it was.
        shutil.move(str(run / "model"), str(tmp_path / "damaged_model"))
        shutil.move(str(run / "run_complete.json"), str(tmp_path / "damaged_run_complete.json"))
        assert _run(config, tmp_path, "run") == 0
        assert _files(run / "model") == _files(finished / "run" / "model")
        assert (run / "run_complete.json").read_bytes() == (finished / "run" / "run_complete.json").read_bytes()


def test_damaged_run_summary_is_one_line(finished: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = _copy(finished, tmp_path)
    complete = tmp_path / "run" / "run_complete.json"
    complete.write_text(complete.read_text().replace('"iterations": 3', '"iterations": 2'))
    capsys.readouterr()
    assert _run(config, tmp_path, "run") == 2
    line = _error_line(capsys.readouterr().err)
    assert f"{complete} differs from what was written" in line


@pytest.mark.parametrize("content, reason", [
    (b"", "the file is empty (0 bytes)"),
    (None, "holds pickled objects beyond tensors and plain containers"),
])
def test_unreadable_checkpoint_without_manifest_names_the_reason_and_the_previous_one(
        finished: Path, tmp_path: Path, capsys: pytest.CaptureFixture, content: bytes, reason: str) -> None:
    """Checkpoints written before manifests are loaded unchecked; one that cannot be read says why."""
    config = _copy(finished, tmp_path)
    run = tmp_path / "run"
    (run / "run_complete.json").unlink()
    checkpoint = run / "checkpoints" / "checkpoint_000003"
    (checkpoint / MANIFEST_FILE).unlink()
    if content is None:  # a foreign pickle: an object only a full unpickler can rebuild
        torch.save({"iteration": 3, "policy": Path("x")}, checkpoint / STATE_FILE)
    else:
        (checkpoint / STATE_FILE).write_bytes(content)
    capsys.readouterr()
    assert _run(config, tmp_path, "run") == 2
    line = _error_line(capsys.readouterr().err)
    assert str(checkpoint / STATE_FILE) in line and reason in line
    assert f"move {checkpoint} away and rerun the same command to resume from checkpoint_000002" in line
    assert "older rl4lms" not in line


def test_a_start_that_failed_before_training_does_not_pin_its_config(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture) -> None:
    config = REPO / "task_configs" / "gsm8k" / "qwen_ppo.yml"
    missing = ["--override", "datapool.args.fixture=false", "--override",
               f"datapool.args.dataset_name={tmp_path / 'missing_data'}"]
    assert _run(config, tmp_path, "run", "--smoke", *missing) == 2
    assert "could not load" in capsys.readouterr().err
    assert _run(config, tmp_path, "run", "--smoke") == 0  # the fixed command runs
    assert json.loads((tmp_path / "run" / "config.json").read_text())["datapool"]["args"]["fixture"] is True
    capsys.readouterr()
    # Once iterations are recorded, another config is refused.
    assert _run(config, tmp_path, "run", "--smoke", "--override", "seed=7") == 2
    assert "holds a run with a different config (differs at: seed)" in _error_line(capsys.readouterr().err)
