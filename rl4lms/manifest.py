"""Content hashes of a written folder (``manifest.json``), so damaged bytes are found before they are used.

Every checkpoint and final model folder holds a ``manifest.json`` listing each of its files with
its size and SHA-256, computed while the file is written (:class:`HashingWriter`) or right after.
Readers verify only the files they load (:func:`verify_files`).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, BinaryIO, Dict, Iterable, Optional
from rl4lms.errors import DamagedArtifactError

MANIFEST_FILE = "manifest.json"
_CHUNK = 2 ** 20

FileDigest = Dict[str, Any]
"""``{"bytes": size, "sha256": hex digest}`` of one file."""


class HashingWriter:
    """A binary file object that hashes the bytes written through it (for ``torch.save``)."""

    def __init__(self, handle: BinaryIO) -> None:
        self.handle = handle
        self._hash = hashlib.sha256()
        self._size = 0

    def write(self, data: bytes) -> int:
        self._hash.update(data)
        self._size += len(data)
        return self.handle.write(data)

    def flush(self) -> None:
        self.handle.flush()

    def digest(self) -> FileDigest:
        return {"bytes": self._size, "sha256": self._hash.hexdigest()}


def file_digest(path: Path) -> FileDigest:
    """Size and SHA-256 of ``path``, read in chunks."""
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return {"bytes": size, "sha256": digest.hexdigest()}


def write_manifest(folder: Path, known: Optional[Dict[str, FileDigest]] = None) -> Path:
    """Write ``folder/manifest.json`` for every file below ``folder``; ``known`` holds digests
    taken while writing (by relative path), the other files are hashed now."""
    known = known or {}
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST_FILE)
    entries = {}
    for path in files:
        name = path.relative_to(folder).as_posix()
        entries[name] = known.get(name) or file_digest(path)
    target = folder / MANIFEST_FILE
    with open(target, "w") as handle:
        json.dump({"algorithm": "sha256", "files": entries}, handle, indent=1, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())
    return target


def read_manifest(folder: Path) -> Optional[Dict[str, FileDigest]]:
    """The files listed in ``folder``'s manifest; None when the folder has none (written before
    rl4lms wrote manifests)."""
    path = folder / MANIFEST_FILE
    if not path.exists():
        return None
    try:
        files = json.loads(path.read_text())["files"]
        if not isinstance(files, dict):
            raise TypeError("files is not a mapping")
        return files
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as error:
        raise DamagedArtifactError(f"{path} is damaged ({type(error).__name__}: {error})") from error


def verify_files(folder: Path, names: Optional[Iterable[str]] = None) -> bool:
    """Check ``names`` (default: every listed file) of ``folder`` against its manifest; False when
    the folder has no manifest (nothing to check against). A :class:`DamagedArtifactError` names
    the first file that differs."""
    files = read_manifest(folder)
    if files is None:
        return False
    for name in (files if names is None else names):
        path = folder / name
        expected = files.get(name)
        if expected is None:
            raise DamagedArtifactError(f"{path} is not listed in {folder / MANIFEST_FILE}")
        if not path.is_file():
            raise DamagedArtifactError(f"{path} is missing")
        size = path.stat().st_size
        if size != expected["bytes"]:
            raise DamagedArtifactError(f"{path} has {size} bytes where {expected['bytes']} were written")
        if file_digest(path)["sha256"] != expected["sha256"]:
            raise DamagedArtifactError(f"{path} differs from what was written (its SHA-256 does not match "
                                       f"{MANIFEST_FILE})")
    return True
