"""The database file: migrations (alembic, the only source of the schema), the connection
pragmas, the async engine, and the read-only connection of the hot path."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, event
from sqlalchemy.exc import DatabaseError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

import migrations
from shardroute.errors import StoreError

MIGRATIONS_DIR = Path(migrations.__file__).resolve().parent
DATABASE_FILE = "shardroute.sqlite3"


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", url)
    return config


def upgrade_database(path: Path, revision: str = "head") -> None:
    """Apply migrations up to `revision` (synchronously; run at start before serving)."""
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


def _on_connect(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    # FULL: an acknowledged write survives a crash of the process and of the machine.
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


def open_engine(path: Path) -> AsyncEngine:
    # One connection: SQLite has one writer at a time anyway, and a second pooled connection
    # would meet a long write as "database is locked" after busy_timeout instead of queuing.
    engine = create_async_engine(f"sqlite+aiosqlite:///{path}", pool_size=1, max_overflow=0)
    event.listen(engine.sync_engine, "connect", _on_connect)
    return engine


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
