"""Crash-safe run artifacts: append-only JSON lines and atomically replaced JSON files.

Every write goes through :func:`writing`, so an unwritable folder or a full disk surfaces as one
:class:`ArtifactWriteError` that names the file, and never damages what was written before.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

from rl4lms.errors import ArtifactWriteError
from rl4lms.manifest import FileDigest, write_manifest

_DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# torch.save and safetensors report a failed write as a RuntimeError / SafetensorError without an errno.
_WRITER_FAILURE_TEXTS = ("inline_container", "PytorchStreamWriter", "file write failed", "No space left",
                         "StorageFull", "IoError")


STAGING_PREFIX = ".staging_"
"""Name prefix of the folder :func:`write_folder_atomic` fills before renaming it into place."""


def _is_write_failure(error: BaseException) -> bool:
    if isinstance(error, OSError):
        return True
    if isinstance(error, RuntimeError) or type(error).__name__ == "SafetensorError":
        return any(text in str(error) for text in _WRITER_FAILURE_TEXTS)
    return False


def _free_bytes(path: Path) -> int:
    for folder in (path, *path.parents):
        if folder.exists():
            return shutil.disk_usage(folder).free
    return -1


def _describe_failure(target: Path, what: str, error: BaseException) -> str:
    free = _free_bytes(target)
    disk_full = (isinstance(error, OSError) and error.errno in _DISK_FULL_ERRNOS) or (
        not isinstance(error, OSError) and 0 <= free < 64 * 2 ** 20)
    if isinstance(error, OSError):
        reason = error.strerror or str(error)
        if error.filename and str(error.filename) != str(target):
            reason += f" ({error.filename})"
    else:
        reason = f"the write failed ({str(error).splitlines()[0] if str(error) else type(error).__name__})"
    if disk_full:
        reason += f"; the disk is full ({free / 2 ** 20:.1f} MiB free)"
    return (f"cannot write {what} {target}: {reason}. Files written before are intact: free the space or fix "
            "the folder's permissions and rerun the same command to continue")


@contextmanager
def writing(target: Path, what: str) -> Iterator[None]:
    """Turn a failed write to ``target`` (``what`` says which artifact) into an :class:`ArtifactWriteError`."""
    try:
        yield
    except ArtifactWriteError:
        raise
    except Exception as error:
        if not _is_write_failure(error):
            raise
        raise ArtifactWriteError(_describe_failure(target, what, error)) from error


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and ``os.replace`` (never half-written)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with writing(path, "file"):
        try:
            with open(tmp, "w") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write ``payload`` as indented JSON with :func:`write_text_atomic`."""
    write_text_atomic(path, json.dumps(payload, indent=2, default=str))


def write_folder_atomic(target: Path, write: Callable[[Path], Optional[Dict[str, FileDigest]]]) -> Path:
    """Let ``write`` fill a staging folder beside ``target``, add its ``manifest.json`` of content
    hashes, then swap it in with a rename. ``write`` may return the digests of files it hashed while
    writing them (:class:`~rl4lms.manifest.HashingWriter`); the others are hashed after it.

    A crash leaves either the old ``target`` or the staging folder, never a half-written ``target``.
    """
    staging = target.with_name(f"{STAGING_PREFIX}{target.name}")
    shutil.rmtree(staging, ignore_errors=True)
    with writing(target, "folder"):
        try:
            staging.mkdir(parents=True)
            write_manifest(staging, write(staging))
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)  # give the space back; ``target`` is untouched
            raise
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
        with writing(self.path, "log"), open(self.path, "a") as handle:
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
