"""The durable store on SQLite: SQLAlchemy 2 (async, aiosqlite), WAL, migrations by alembic.

Each repository returns domain dataclasses, never rows. Transactions are short and no network
IO happens inside one. Expiry deletes in bounded batches so a sweep never holds the write lock
for long.
"""

from __future__ import annotations

import functools
import sqlite3
import time
from collections.abc import Callable, Coroutine, Iterable, Sequence
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

import anyio
import anyio.lowlevel
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from multiaddr import Multiaddr
from sqlalchemy import bindparam, create_engine, delete, event, func, select
from sqlalchemy.dialects.sqlite import insert
from sqlalchemy.exc import DatabaseError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

import migrations
from shardroute.addrs import multiaddr_from_bytes, multiaddr_to_bytes
from shardroute.errors import StoreError
from shardroute.identity.peer_id import PeerId
from shardroute.kad.stores import (
    DEFAULT_MAX_PROVIDERS_PER_KEY,
    ProviderRecord,
    SavedPeer,
    StoredValue,
)
from shardroute.protocol.varint import LengthPrefixedReader, frame
from shardroute.store.schema import (
    announcements,
    provider_peers,
    provider_records,
    routing_peers,
    value_records,
)

MIGRATIONS_DIR = Path(migrations.__file__).resolve().parent
DATABASE_FILE = "shardroute.sqlite3"


def pack_addrs(addrs: Iterable[Multiaddr]) -> bytes:
    return b"".join(frame(multiaddr_to_bytes(a)) for a in addrs)


def unpack_addrs(blob: bytes) -> tuple[Multiaddr, ...]:
    reader = LengthPrefixedReader(1024)
    reader.receive_data(blob)
    out = []
    while (raw := reader.next_message()) is not None:
        try:
            out.append(multiaddr_from_bytes(raw))
        except ValueError:
            continue
    return tuple(out)


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


_PROVIDERS_SQL = (
    "SELECT p.peer, r.addrs, r.received_at, r.expires_at, r.addrs_expire_at "
    "FROM provider_records r JOIN provider_peers p ON p.id = r.provider_id "
    "WHERE r.key = ? AND r.expires_at > ? ORDER BY random() LIMIT ?"
)

P = ParamSpec("P")
R = TypeVar("R")
# (operation, seconds): how the store reports its latency (the node feeds a histogram).
StoreObserver = Callable[[str, float], None]


class _Repository:
    """What every repository shares: its name in metrics and the latency observer."""

    name = ""
    observe: StoreObserver | None = None

    def _observed(self, operation: str, started: float) -> None:
        if self.observe is not None:
            self.observe(f"{self.name}.{operation}", time.perf_counter() - started)


Repo = TypeVar("Repo", bound=_Repository)


def atomic(
    fn: Callable[Concatenate[Repo, P], Coroutine[Any, Any, R]],
) -> Callable[Concatenate[Repo, P], Coroutine[Any, Any, R]]:
    """Run a store operation shielded from cancellation (they are short, and one cut off
    inside aiosqlite leaves its connection and thread behind, which stalls the process), and
    report how long it took."""

    async def run(self: Repo, /, *args: P.args, **kwargs: P.kwargs) -> R:
        started = time.perf_counter()
        with anyio.CancelScope(shield=True):
            result = await fn(self, *args, **kwargs)
        self._observed(fn.__name__, started)
        return result

    functools.update_wrapper(run, fn)
    return run


def _on_connect(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    # FULL: an acknowledged write survives a crash of the process and of the machine.
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


class SqliteStore:
    """One database file; the repositories below share its engine."""

    def __init__(self, engine: AsyncEngine, path: Path) -> None:
        self.engine = engine
        self.path = path
        self.providers = SqliteProviderStore(engine)
        self.values = SqliteValueStore(engine)
        self.routing = SqliteRoutingTableStore(engine)
        self.announcements = SqliteAnnouncementStore(engine)

    @classmethod
    async def open(
        cls, data_dir: Path, *, max_providers_per_key: int = DEFAULT_MAX_PROVIDERS_PER_KEY
    ) -> SqliteStore:
        path = data_dir / DATABASE_FILE
        upgrade_database(path)
        engine = create_async_engine(f"sqlite+aiosqlite:///{path}")
        event.listen(engine.sync_engine, "connect", _on_connect)
        store = cls(engine, path)
        store.providers.max_per_key = max_providers_per_key
        store.providers.reader = _open_reader(path)
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


def _open_reader(path: Path) -> sqlite3.Connection:
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


class SqliteProviderStore(_Repository):
    name = "providers"

    def __init__(
        self, engine: AsyncEngine, max_per_key: int = DEFAULT_MAX_PROVIDERS_PER_KEY
    ) -> None:
        self.engine = engine
        self.max_per_key = max_per_key
        self.reader: sqlite3.Connection | None = None

    @atomic
    async def add_provider(self, record: ProviderRecord) -> bool:
        t = provider_records
        async with self.engine.begin() as conn:
            await conn.execute(
                insert(provider_peers).values(peer=record.provider.raw).on_conflict_do_nothing()
            )
            provider_id = await conn.scalar(
                select(provider_peers.c.id).where(provider_peers.c.peer == record.provider.raw)
            )
            others = await conn.scalar(
                select(func.count())
                .select_from(t)
                .where(
                    t.c.key == record.key,
                    t.c.provider_id != provider_id,
                    t.c.expires_at > record.received_at,
                )
            )
            if others is not None and others >= self.max_per_key:
                known = await conn.scalar(
                    select(func.count())
                    .select_from(t)
                    .where(t.c.key == record.key, t.c.provider_id == provider_id)
                )
                if not known:
                    return False
            stmt = insert(t).values(
                key=record.key,
                provider_id=provider_id,
                addrs=pack_addrs(record.addrs),
                received_at=record.received_at,
                expires_at=record.expires_at,
                addrs_expire_at=record.addrs_expire_at,
            )
            stmt = stmt.on_conflict_do_update(
                index_elements=[t.c.key, t.c.provider_id],
                set_={
                    "addrs": stmt.excluded.addrs,
                    "received_at": stmt.excluded.received_at,
                    "expires_at": stmt.excluded.expires_at,
                    "addrs_expire_at": stmt.excluded.addrs_expire_at,
                },
            )
            await conn.execute(stmt)
        return True

    async def get_providers(self, key: bytes, now: float, limit: int) -> list[ProviderRecord]:
        if self.reader is None:
            raise RuntimeError("open the store with SqliteStore.open()")
        started = time.perf_counter()
        try:
            rows = self.reader.execute(_PROVIDERS_SQL, (key, now, limit)).fetchall()
        except sqlite3.DatabaseError as exc:  # busy during WAL recovery after a crash, corruption
            raise StoreError(f"local provider records unreadable right now: {exc}") from exc
        self._observed("get_providers", started)
        await anyio.lowlevel.checkpoint()
        return [
            ProviderRecord(
                key,
                PeerId.from_bytes(peer),
                unpack_addrs(addrs) if addrs_expire_at is None or now < addrs_expire_at else (),
                received_at,
                expires_at,
                addrs_expire_at,
            )
            for peer, addrs, received_at, expires_at, addrs_expire_at in rows
        ]

    @atomic
    async def expire(self, now: float, batch: int) -> int:
        """Delete up to `batch` expired records (peers rows stay: a few bytes each, and
        their IDs are reused when those providers announce again)."""
        t = provider_records
        async with self.engine.begin() as conn:
            doomed = select(t.c.key, t.c.provider_id).where(t.c.expires_at <= now).limit(batch)
            keys = [(r.key, r.provider_id) for r in await conn.execute(doomed)]
            for key, provider_id in keys:
                await conn.execute(delete(t).where(t.c.key == key, t.c.provider_id == provider_id))
            return len(keys)

    @atomic
    async def count(self, now: float | None = None) -> int:
        """Records held; with `now`, only those not yet expired (what a GET_PROVIDERS sees)."""
        query = select(func.count()).select_from(provider_records)
        if now is not None:
            query = query.where(provider_records.c.expires_at > now)
        async with self.engine.connect() as conn:
            return int(await conn.scalar(query) or 0)


class SqliteValueStore(_Repository):
    name = "values"

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    @atomic
    async def get(self, key: bytes) -> StoredValue | None:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(select(value_records).where(value_records.c.key == key))
            ).first()
        return None if row is None else StoredValue(row.key, row.value, row.received_at)

    @atomic
    async def put(self, key: bytes, value: bytes, received_at: float) -> None:
        stmt = insert(value_records).values(key=key, value=value, received_at=received_at)
        stmt = stmt.on_conflict_do_update(
            index_elements=[value_records.c.key], set_={"value": value, "received_at": received_at}
        )
        async with self.engine.begin() as conn:
            await conn.execute(stmt)

    @atomic
    async def expire(self, older_than: float, batch: int) -> int:
        t = value_records
        async with self.engine.begin() as conn:
            keys = [
                r.key
                for r in await conn.execute(
                    select(t.c.key).where(t.c.received_at < older_than).limit(batch)
                )
            ]
            if keys:
                await conn.execute(delete(t).where(t.c.key.in_(keys)))
            return len(keys)


class SqliteRoutingTableStore(_Repository):
    name = "routing"

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    @atomic
    async def save(self, peers: Sequence[SavedPeer]) -> None:
        """Replace the saved table with `peers` in one transaction."""
        async with self.engine.begin() as conn:
            await conn.execute(delete(routing_peers))
            if peers:
                await conn.execute(
                    insert(routing_peers),
                    [
                        {
                            "peer": p.peer.raw,
                            "addrs": pack_addrs(p.addrs),
                            "last_seen": p.last_seen,
                            "last_useful": p.last_useful,
                        }
                        for p in peers
                    ],
                )

    @atomic
    async def load(self) -> list[SavedPeer]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(select(routing_peers).order_by(routing_peers.c.last_seen))
            return [
                SavedPeer(
                    PeerId.from_bytes(r.peer), unpack_addrs(r.addrs), r.last_seen, r.last_useful
                )
                for r in rows
            ]


class SqliteAnnouncementStore(_Repository):
    name = "announcements"

    """The shards this node announces, with when each is next due for (re)publishing."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    @atomic
    async def add(self, entries: Sequence[tuple[bytes, int]], now: float | None = None) -> int:
        """Durably record (multihash, codec) pairs as announced and due now; one transaction."""
        now = time.time() if now is None else now
        if not entries:
            return 0
        stmt = insert(announcements)
        stmt = stmt.on_conflict_do_update(
            index_elements=[announcements.c.key],
            set_={"next_publish_at": stmt.excluded.next_publish_at},
        )
        async with self.engine.begin() as conn:
            await conn.execute(
                stmt,
                [
                    {
                        "key": k,
                        "codec": c,
                        "announced_at": now,
                        "next_publish_at": now,
                        "stored_on": 0,
                    }
                    for k, c in entries
                ],
            )
        return len(entries)

    @atomic
    async def remove(self, keys: Sequence[bytes]) -> int:
        async with self.engine.begin() as conn:
            result = await conn.execute(
                delete(announcements).where(announcements.c.key.in_(list(keys)))
            )
            return int(result.rowcount or 0)

    @atomic
    async def due(self, now: float, limit: int) -> list[bytes]:
        t = announcements
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(t.c.key)
                .where(t.c.next_publish_at <= now)
                .order_by(t.c.next_publish_at)
                .limit(limit)
            )
            return [r.key for r in rows]

    @atomic
    async def due_count(self, now: float) -> int:
        t = announcements
        async with self.engine.connect() as conn:
            return int(
                await conn.scalar(
                    select(func.count()).select_from(t).where(t.c.next_publish_at <= now)
                )
                or 0
            )

    @atomic
    async def next_due_at(self) -> float | None:
        async with self.engine.connect() as conn:
            value = await conn.scalar(select(func.min(announcements.c.next_publish_at)))
            return None if value is None else float(value)

    @atomic
    async def reschedule(self, entries: Sequence[tuple[bytes, float, int]]) -> None:
        """(key, next publish time, peers that took the last round) for each shard; one
        transaction. Shards withdrawn meanwhile stay withdrawn (no row to update)."""
        if not entries:
            return
        t = announcements
        stmt = (
            t.update()
            .where(t.c.key == bindparam("k"))
            .values(next_publish_at=bindparam("n"), stored_on=bindparam("s"))
        )
        async with self.engine.begin() as conn:
            await conn.execute(stmt, [{"k": k, "n": n, "s": s} for k, n, s in entries])

    @atomic
    async def contains(self, key: bytes) -> bool:
        async with self.engine.connect() as conn:
            return (
                await conn.execute(select(announcements.c.key).where(announcements.c.key == key))
            ).first() is not None

    @atomic
    async def count(self) -> int:
        async with self.engine.connect() as conn:
            return int(await conn.scalar(select(func.count()).select_from(announcements)) or 0)
