"""The node's data folder is used by one node at a time.

`serve` takes an exclusive `flock` on `DIR/lock` and holds it for its life. The kernel drops
the lock when the process ends however it ends, so a lock left by a killed node never blocks
the next start; the file itself only says who held it last.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from shardroute.errors import StartupError

LOCK_FILE = "lock"


class DataDirLock:
    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            # A node that cannot write its folder could not keep what it acknowledges.
            raise StartupError(
                f"data folder {self.path.parent} cannot be written: {exc.strerror or exc}"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip()
            os.close(fd)
            who = f" (pid {holder})" if holder.isdigit() else ""
            raise StartupError(
                f"data folder {self.path.parent} is in use by another shardroute node{who}; "
                "give this one its own --data-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self) -> DataDirLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()
