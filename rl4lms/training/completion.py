"""``run_complete.json``: the summary of a finished run, vouching for its final model.

The file records the SHA-256 of the model folder's ``manifest.json`` and of its own summary, so a
rerun of a finished run checks the summary, the manifest and every file of the final model before
it answers "already complete".
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Dict

from rl4lms.errors import DamagedArtifactError
from rl4lms.training.artifacts import write_json_atomic
from rl4lms.manifest import MANIFEST_FILE, file_digest, verify_files

COMPLETE_FILE = "run_complete.json"
MODEL_FOLDER = "model"
INTEGRITY_KEY = "integrity"


def _summary_hash(summary: Dict[str, Any]) -> str:
    body = {k: v for k, v in summary.items() if k != INTEGRITY_KEY}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def write_complete(run_dir: Path, summary: Dict[str, Any]) -> Dict[str, Any]:
    """Write ``run_complete.json`` for ``summary`` and the model folder already written; return
    what was written."""
    integrity = {"summary_sha256": _summary_hash(summary),
                 "model_manifest_sha256": file_digest(run_dir / MODEL_FOLDER / MANIFEST_FILE)["sha256"]}
    marked = {**summary, INTEGRITY_KEY: integrity}
    write_json_atomic(run_dir / COMPLETE_FILE, marked)
    return marked


def _damaged(run_dir: Path, what: str) -> DamagedArtifactError:
    return DamagedArtifactError(f"{what}; move {run_dir / COMPLETE_FILE} and {run_dir / MODEL_FOLDER} away and rerun "
                                "the same command to write the final model again from the last checkpoint")


def read_complete(run_dir: Path) -> Dict[str, Any]:
    """The summary in ``run_complete.json``, checked against its own hash (a file written before
    rl4lms checked its artifacts has none and is taken as it is)."""
    path = run_dir / COMPLETE_FILE
    try:
        summary = json.loads(path.read_text())
        if not isinstance(summary, dict) or not isinstance(summary.get("iterations", 0), int):
            raise ValueError("not a run summary")
    except (ValueError, UnicodeDecodeError) as error:
        raise _damaged(run_dir, f"{path} is damaged ({type(error).__name__}: {error})") from error
    integrity = summary.get(INTEGRITY_KEY)
    if integrity is not None and integrity.get("summary_sha256") != _summary_hash(summary):
        raise _damaged(run_dir, f"{path} differs from what was written (its summary_sha256 does not match)")
    return summary


def verify_final_model(run_dir: Path, summary: Dict[str, Any]) -> None:
    """Check the final model folder against the manifest that ``summary`` vouches for: one
    :class:`DamagedArtifactError` line naming the first damaged file."""
    integrity = summary.get(INTEGRITY_KEY)
    if integrity is None:
        return
    model_dir = run_dir / MODEL_FOLDER
    manifest = model_dir / MANIFEST_FILE
    if not manifest.is_file():
        raise _damaged(run_dir, f"{manifest} is missing")
    if file_digest(manifest)["sha256"] != integrity["model_manifest_sha256"]:
        raise _damaged(run_dir, f"{manifest} differs from what was written")
    try:
        verify_files(model_dir)
    except DamagedArtifactError as error:
        raise _damaged(run_dir, str(error)) from error
