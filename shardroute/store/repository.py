"""What every repository shares: its name in metrics, its latency observer, and the
`atomic` decorator its operations run under."""

from __future__ import annotations

import errno
import functools
import os
import sqlite3
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

import anyio

from shardroute.errors import StoreError, StoreFull, StoreUnavailable

if TYPE_CHECKING:
    from shardroute.store.engine import Database

P = ParamSpec("P")
R = TypeVar("R")
# (operation, seconds): how the store reports its latency (the node feeds a histogram).
StoreObserver = Callable[[str, float], None]


class Repository:
    """A repository's name in metrics and its latency observer."""

    name = ""
    observe: StoreObserver | None = None
    db: Database

    def _observed(self, operation: str, started: float) -> None:
        if self.observe is not None:
            self.observe(f"{self.name}.{operation}", time.perf_counter() - started)


Repo = TypeVar("Repo", bound=Repository)


def atomic(
    fn: Callable[Concatenate[Repo, P], Coroutine[Any, Any, R]],
) -> Callable[Concatenate[Repo, P], Coroutine[Any, Any, R]]:
    """Run a store operation shielded from cancellation (they are short, and one cut off
    between BEGIN and COMMIT would leave the shared connection inside its transaction), and
    report how long it took."""

    async def run(self: Repo, /, *args: P.args, **kwargs: P.kwargs) -> R:
        started = time.perf_counter()
        with anyio.CancelScope(shield=True):
            try:
                result = await fn(self, *args, **kwargs)
            except sqlite3.Error as exc:
                raise store_failure(exc, f"{self.name}.{fn.__name__}", self.db.path) from exc
        self._observed(fn.__name__, started)
        return result

    functools.update_wrapper(run, fn)
    return run


# SQLite primary result codes (sqlite3.h) for a database that cannot take writes.
SQLITE_BUSY = 5  # another connection holds the write lock past the busy timeout
SQLITE_LOCKED = 6
SQLITE_READONLY = 8
SQLITE_IOERR = 10
SQLITE_FULL = 13
SQLITE_CANTOPEN = 14


def store_failure(exc: BaseException, operation: str, path: Path | None = None) -> StoreError:
    """The StoreError for a database exception: full, unwritable, or something else. The
    transaction was rolled back; nothing of the operation was kept. With the database's
    `path`, an unwritable database says why when the file system knows (SQLite reports a
    write refused by a read-only file system as a mere "disk I/O error")."""
    code = getattr(exc, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    text = str(exc)
    if primary == SQLITE_FULL or "disk is full" in text:
        return StoreFull(f"{operation}: the disk is full ({text})")
    unwritable = (SQLITE_BUSY, SQLITE_LOCKED, SQLITE_READONLY, SQLITE_IOERR, SQLITE_CANTOPEN)
    if primary in unwritable or "readonly" in text or "locked" in text:
        cause = None if primary in (SQLITE_BUSY, SQLITE_LOCKED) else why_unwritable(path)
        because = f": {cause}" if cause else ""
        return StoreUnavailable(f"{operation}: the database cannot be written{because} ({text})")
    return StoreError(f"{operation}: {text}")


def why_unwritable(path: Path | None) -> str | None:
    """What the file system answers when asked for a file beside the database (an unnamed
    one, O_TMPFILE, gone when closed): the cause of a refused write, or None when it gives
    one (an I/O error, or SQLite's own refusal). The database file itself is never opened:
    closing any descriptor of it would drop SQLite's POSIX locks on it."""
    tmpfile = getattr(os, "O_TMPFILE", None)
    if path is None or tmpfile is None:
        return None
    try:
        fd = os.open(path.parent, os.O_WRONLY | tmpfile | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        if exc.errno == errno.EROFS:
            return "its file system is read-only"
        if exc.errno in (errno.EACCES, errno.EPERM):
            return "its folder is not writable"
        return None  # e.g. a file system without O_TMPFILE: nothing learnt
    os.close(fd)
    return None
