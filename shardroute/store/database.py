"""The durable store on SQLite: SQLAlchemy 2 (async, aiosqlite), WAL, migrations by alembic.

One database file, one repository per table (providers, values, routing, announcements), each
returning domain dataclasses, never rows. Transactions are short and no network IO happens
inside one. Expiry deletes in bounded batches so a sweep never holds the write lock for long.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine

from shardroute.store.announcements import SqliteAnnouncementStore
from shardroute.store.engine import DATABASE_FILE, open_engine, open_reader, upgrade_database
from shardroute.store.providers import SqliteProviderStore
from shardroute.store.repository import StoreObserver
from shardroute.store.routing import SqliteRoutingTableStore
from shardroute.store.values import SqliteValueStore


class SqliteStore:
    """One database file; the repositories below share its engine."""

    def __init__(self, engine: AsyncEngine, path: Path, *, max_providers_per_key: int) -> None:
        self.engine = engine
        self.path = path
        self.providers = SqliteProviderStore(engine, max_per_key=max_providers_per_key)
        self.values = SqliteValueStore(engine)
        self.routing = SqliteRoutingTableStore(engine)
        self.announcements = SqliteAnnouncementStore(engine)

    @classmethod
    async def open(cls, data_dir: Path, *, max_providers_per_key: int) -> SqliteStore:
        path = data_dir / DATABASE_FILE
        upgrade_database(path)
        store = cls(open_engine(path), path, max_providers_per_key=max_providers_per_key)
        store.providers.reader = open_reader(path)
        return store

    def observe_with(self, observer: StoreObserver) -> None:
        """Report every operation's latency to `observer` (operation, seconds)."""
        for repository in (self.providers, self.values, self.routing, self.announcements):
            repository.observe = observer

    async def close(self) -> None:
        if self.providers.reader is not None:
            self.providers.reader.close()
            self.providers.reader = None
        await self.engine.dispose()
