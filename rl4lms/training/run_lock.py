"""An exclusive lock on a run folder, so no run is ever trained by two processes at once."""
from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Optional
from rl4lms.errors import RunLockedError

LOCK_FILE = ".run.lock"


class RunLock:
    """``flock`` on ``<run_dir>/.run.lock``; the kernel drops it when the holder dies (even by SIGKILL).

    Child processes that inherit the descriptor share the lock, so a launcher can take it and
    pass it on to the process that trains.
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / LOCK_FILE
        self._fd: Optional[int] = None

    def acquire(self) -> "RunLock":
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunLockedError(f"{self.path.parent} is being trained by another process; "
                                 "wait for it or use another --experiment_name") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
