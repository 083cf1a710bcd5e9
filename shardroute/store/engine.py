"""The database file: migrations (alembic on SQLAlchemy, the only source of the schema), the
writing connections (aiosqlite's, and a worker thread's for whole transactions) with their
pragmas, and the read-only connection of the hot path.

alembic and SQLAlchemy are imported only when the schema must change: together they hold some
25 MiB of a node's memory for as long as it runs. `serve` migrates in a child process
(`upgrade_in_child`), so a running node never loads them; a node on a current schema checks
its revision with sqlite3 alone.
"""

from __future__ import annotations

import contextlib
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import aiosqlite
import anyio
import anyio.to_thread

from shardroute.errors import StoreError

if TYPE_CHECKING:
    from alembic.config import Config

R = TypeVar("R")

DATABASE_FILE = "shardroute.sqlite3"
# The newest migration in migrations/versions (a test in tests/store/test_database.py holds
# them equal).
SCHEMA_REVISION = "0004"


def migrations_dir() -> Path:
    import migrations

    return Path(migrations.__file__).resolve().parent


def alembic_config(url: str) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.set_main_option("sqlalchemy.url", url)
    return config


def schema_revision(path: Path) -> str | None:
    """The schema revision of the database at `path`, read with sqlite3 alone; None if there
    is no such file or it holds no revision (new, or not a database of ours)."""
    if not path.is_file():
        return None
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
            row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    except sqlite3.Error:
        return None
    return None if row is None else str(row[0])


def upgrade_database(path: Path, revision: str = "head") -> None:
    """Apply migrations up to `revision` (synchronously; run at start before serving)."""
    if revision == "head" and schema_revision(path) == SCHEMA_REVISION:
        return
    from alembic import command
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory
    from sqlalchemy import create_engine
    from sqlalchemy.exc import DatabaseError

    path.parent.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{path}"
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            config = alembic_config(url)
            config.attributes["connection"] = conn
            known = {s.revision for s in ScriptDirectory.from_config(config).walk_revisions()}
            current = MigrationContext.configure(conn).get_current_revision()
            if current is not None and current not in known:
                raise StoreError(
                    f"{path}: the database is at schema revision {current!r}, which this "
                    f"shardroute does not know (it knows {', '.join(sorted(known))}); a newer "
                    "version wrote it. Run that version, or restore a backup."
                )
            command.upgrade(config, revision)
    except DatabaseError as exc:
        raise StoreError(f"{path}: cannot use it as the node's database: {exc.orig}") from None
    finally:
        engine.dispose()


def upgrade_in_child(path: Path) -> None:
    """`upgrade_database` in a child process (nothing to do if the schema is current): the
    migration tools' memory goes with the child. StoreError with the child's message."""
    if schema_revision(path) == SCHEMA_REVISION:
        return
    done = subprocess.run(
        [sys.executable, "-m", "shardroute.store.migrate", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        raise StoreError(lines[-1] if lines else f"migrating {path} failed ({done.returncode})")


# Applied to both writing connections. Durable commits (synchronous=FULL) survive a crash of
# the process and of the machine; soft ones (NORMAL: no fsync in WAL mode) keep the database
# consistent and may lose the last commits to a machine crash.
_PRAGMAS = ("PRAGMA journal_mode=WAL", "PRAGMA foreign_keys=ON", "PRAGMA busy_timeout=5000")


class Database:
    """The node's writing connections, so the event loop never waits for the disk.

    aiosqlite's connection (synchronous=FULL) runs each statement as one hand-off to its
    thread: `transaction()` and `reading()`, for repositories that write a few durable,
    set-based statements. `run` takes the whole transaction as one function onto a worker
    thread with a plain sqlite3 connection, one hand-off in all, durable or soft: the hot
    writes (provider records, received and our own; the publisher's schedule) and lone
    DELETEs. Under load a hand-off costs far more than its statement (a thread woken, the GIL
    passed back and forth, the loop woken), so a batch of one provider record cost six. One
    lock keeps one transaction (or read) at a time across both, as SQLite has one writer
    anyway."""

    def __init__(
        self, durable: aiosqlite.Connection, worker: sqlite3.Connection, path: Path | None = None
    ) -> None:
        self._durable = durable
        self._worker = worker  # used only on the worker thread, under the lock
        self._worker_synchronous = "FULL"  # as `open` leaves it; `run` switches it on demand
        self._lock = anyio.Lock()
        self._one_thread = anyio.CapacityLimiter(1)
        self.path = path  # the file, for the cause of a refused write

    @classmethod
    async def open(cls, path: Path) -> Database:
        # Autocommit mode (isolation_level None) on both: transactions are explicit BEGINs.
        worker = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        try:
            for pragma in (*_PRAGMAS, "PRAGMA synchronous=FULL"):
                worker.execute(pragma)
            durable = await aiosqlite.connect(path, isolation_level=None)
        except BaseException:
            worker.close()
            raise
        try:
            for pragma in (*_PRAGMAS, "PRAGMA synchronous=FULL"):
                await durable.execute(pragma)
        except BaseException:
            await durable.close()
            worker.close()
            raise
        return cls(durable, worker, path=path)

    async def run(self, work: Callable[[sqlite3.Connection], R], *, durable: bool = True) -> R:
        """`work(conn)` inside BEGIN IMMEDIATE … COMMIT on the worker thread, rolled back if
        it raises; its result. `durable=False` commits without fsync: soft state, which a
        machine crash may lose (the database stays consistent)."""
        worker = self._worker
        synchronous = "FULL" if durable else "NORMAL"

        def transaction() -> R:
            if self._worker_synchronous != synchronous:
                worker.execute(f"PRAGMA synchronous={synchronous}")
                self._worker_synchronous = synchronous
            worker.execute("BEGIN IMMEDIATE")
            try:
                result = work(worker)
                worker.execute("COMMIT")
            except BaseException:
                if worker.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        worker.execute("ROLLBACK")
                raise
            return result

        async with self._lock:
            return await anyio.to_thread.run_sync(transaction, limiter=self._one_thread)

    async def delete(self, sql: str, parameters: Sequence[object]) -> int:
        """One DELETE as its own durable transaction (one hand-off); the rows it removed."""
        return await self.run(lambda conn: max(0, conn.execute(sql, parameters).rowcount))

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """BEGIN IMMEDIATE … COMMIT (durable), rolled back on any error."""
        async with self._lock:
            conn = self._durable
            await conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                await conn.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    await conn.execute("ROLLBACK")  # none left if the COMMIT itself failed
                raise

    @asynccontextmanager
    async def reading(self) -> AsyncIterator[aiosqlite.Connection]:
        """A connection for reads outside a transaction (each statement sees committed data)."""
        async with self._lock:
            yield self._durable

    async def set_query_only(self, on: bool) -> None:
        """Refuse (or allow again) every write on both connections, as a read-only file would."""
        pragma = f"PRAGMA query_only={'ON' if on else 'OFF'}"
        async with self._lock:
            await self._durable.execute(pragma)
            await anyio.to_thread.run_sync(self._worker.execute, pragma, limiter=self._one_thread)

    async def close(self) -> None:
        await self._durable.close()
        async with self._lock:  # not while a transaction runs on the worker thread
            self._worker.close()


def open_reader(path: Path) -> sqlite3.Connection:
    """The connection of the hot read (local providers of a key), used inline on the event
    loop. In WAL mode a reader never waits for the writer, and an indexed point read takes
    tens of microseconds: less than handing it to a thread and back, which (with SQLAlchemy's
    async pool before that) was most of the CPU of a local find."""
    reader = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    # WAL is what keeps this reader from waiting on writers; it persists in the file, and
    # migrations may just have created it in rollback-journal mode.
    reader.execute("PRAGMA journal_mode=WAL")
    reader.execute("PRAGMA query_only=ON")
    # Only WAL recovery after a crash makes a reader wait; do not stall the loop for long.
    reader.execute("PRAGMA busy_timeout=200")
    return reader
