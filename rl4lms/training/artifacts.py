"""Crash-safe run artifacts: append-only JSON lines and atomically replaced JSON files."""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Dict, List


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and ``os.replace`` (never half-written)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write ``payload`` as indented JSON with :func:`write_text_atomic`."""
    write_text_atomic(path, json.dumps(payload, indent=2, default=str))


def write_folder_atomic(target: Path, write: Callable[[Path], None]) -> Path:
    """Let ``write`` fill a staging folder beside ``target``, then swap it in with a rename.

    A crash leaves either the old ``target`` or the staging folder, never a half-written ``target``.
    """
    staging = target.with_name(f".staging_{target.name}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    write(staging)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(staging, target)
    return target


class JsonlLog:
    """An append-only ``.jsonl`` file whose every line is one complete JSON record.

    Each record carries ``key`` (``iteration`` or ``epoch``). After a crash,
    :meth:`rollback` moves a torn last line and the records of iterations that will be
    re-run into ``superseded/<name>.<time>.jsonl`` beside it, so nothing written is lost and
    the main file matches the resumed run.
    """

    def __init__(self, path: Path, key: str = "iteration") -> None:
        self.path = path
        self.key = key

    def append(self, record: Dict[str, Any]) -> None:
        line = json.dumps(record, default=float) + "\n"
        with open(self.path, "a") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())

    def records(self) -> List[Dict[str, Any]]:
        """The complete records (a torn trailing line is skipped)."""
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out

    def rollback(self, keep_up_to: int) -> int:
        """Keep records with ``key <= keep_up_to``; archive the rest. Returns how many moved."""
        if not self.path.exists():
            return 0
        kept, moved = [], []
        for line in self.path.read_text().splitlines(keepends=True):
            try:
                record = json.loads(line)
                keep = (isinstance(record, dict) and int(record.get(self.key, 0)) <= keep_up_to
                        and line.endswith("\n"))
            except (json.JSONDecodeError, TypeError, ValueError):
                keep = False
            (kept if keep else moved).append(line if line.endswith("\n") else line + "\n")
        if not moved:
            return 0
        archive_dir = self.path.parent / "superseded"
        archive_dir.mkdir(exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        with open(archive_dir / f"{self.path.stem}.{stamp}.jsonl", "a") as handle:
            handle.writelines(moved)
            handle.flush()
            os.fsync(handle.fileno())
        write_text_atomic(self.path, "".join(kept))
        return len(moved)
