"""What every repository shares: its name in metrics, its latency observer, and the
`atomic` decorator its operations run under."""

from __future__ import annotations

import functools
import sqlite3
import time
from collections.abc import Callable, Coroutine
from typing import Any, Concatenate, ParamSpec, TypeVar

import anyio

from shardroute.errors import StoreError, StoreFull, StoreUnavailable

P = ParamSpec("P")
R = TypeVar("R")
# (operation, seconds): how the store reports its latency (the node feeds a histogram).
StoreObserver = Callable[[str, float], None]


class Repository:
    """A repository's name in metrics and its latency observer."""

    name = ""
    observe: StoreObserver | None = None

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
                raise store_failure(exc, f"{self.name}.{fn.__name__}") from exc
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


def store_failure(exc: BaseException, operation: str) -> StoreError:
    """The StoreError for a database exception: full, unwritable, or something else. The
    transaction was rolled back; nothing of the operation was kept."""
    code = getattr(exc, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    text = str(exc)
    if primary == SQLITE_FULL or "disk is full" in text:
        return StoreFull(f"{operation}: the disk is full ({text})")
    unwritable = (SQLITE_BUSY, SQLITE_LOCKED, SQLITE_READONLY, SQLITE_IOERR, SQLITE_CANTOPEN)
    if primary in unwritable or "readonly" in text or "locked" in text:
        return StoreUnavailable(f"{operation}: the database cannot be written ({text})")
    return StoreError(f"{operation}: {text}")
