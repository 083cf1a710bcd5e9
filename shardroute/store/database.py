"""The durable store on SQLite: WAL, migrations by alembic (on SQLAlchemy), writes through an
aiosqlite connection and a worker thread's (`engine.Database`), the hot read on a connection of
its own.

One database file, one repository per table (providers, values, routing, announcements), each
returning domain dataclasses, never rows. Transactions are short and no network IO happens
inside one. Expiry deletes in bounded batches so a sweep never holds the write lock for long.
"""

from __future__ import annotations

from pathlib import Path

from shardroute.store.announcements import SqliteAnnouncementStore
from shardroute.store.engine import (
    DATABASE_FILE,
    Database,
    open_reader,
    upgrade_database,
    upgrade_in_child,
)
from shardroute.store.providers import SqliteProviderStore
from shardroute.store.repository import StoreObserver
from shardroute.store.routing import SqliteRoutingTableStore
from shardroute.store.values import SqliteValueStore


class SqliteStore:
    """One database file; the repositories below share its writing connection."""

    def __init__(self, db: Database, path: Path, *, max_providers_per_key: int) -> None:
        self.db = db
        self.path = path
        self.providers = SqliteProviderStore(db, max_per_key=max_providers_per_key)
        self.values = SqliteValueStore(db)
        self.routing = SqliteRoutingTableStore(db)
        self.announcements = SqliteAnnouncementStore(db)

    @classmethod
    async def open(
        cls, data_dir: Path, *, max_providers_per_key: int, migrate_in_child: bool = False
    ) -> SqliteStore:
        """`migrate_in_child`: a long-running node's choice (`engine.upgrade_in_child`)."""
        path = data_dir / DATABASE_FILE
        if migrate_in_child:
            upgrade_in_child(path)
        else:
            upgrade_database(path)
        store = cls(await Database.open(path), path, max_providers_per_key=max_providers_per_key)
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
        await self.db.close()
