"""Provider records this node keeps for others (ADD_PROVIDER received), and its own."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence

import anyio.lowlevel
from sqlalchemy import delete, func, select
from sqlalchemy.dialects.sqlite import insert
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from shardroute.errors import StoreError
from shardroute.identity.peer_id import PeerId
from shardroute.kad.repositories import ProviderRecord
from shardroute.store.codec import pack_addrs, unpack_addrs
from shardroute.store.repository import Repository, atomic
from shardroute.store.schema import provider_peers, provider_records

_PROVIDERS_SQL = (
    "SELECT p.peer, r.addrs, r.received_at, r.expires_at, r.addrs_expire_at "
    "FROM provider_records r JOIN provider_peers p ON p.id = r.provider_id "
    "WHERE r.key = ? AND r.expires_at > ? ORDER BY random() LIMIT ?"
)


# Records written per transaction.
WRITE_BATCH = 1000


class SqliteProviderStore(Repository):
    name = "providers"

    def __init__(self, engine: AsyncEngine, *, max_per_key: int) -> None:
        self.engine = engine
        self.max_per_key = max_per_key
        self.reader: sqlite3.Connection | None = None

    async def add_provider(self, record: ProviderRecord) -> bool:
        return (await self.add_providers([record]))[0]

    @atomic
    async def add_providers(self, records: Sequence[ProviderRecord]) -> list[bool]:
        """Upsert many records, each under the per-key cap, in transactions of at most
        `WRITE_BATCH` (one fsync each, and the write lock never held long); which were stored."""
        stored: list[bool] = []
        for start in range(0, len(records), WRITE_BATCH):
            async with self.engine.begin() as conn:
                chunk = records[start : start + WRITE_BATCH]
                stored += await conn.run_sync(_upsert_all, chunk, self.max_per_key)
        return stored

    @atomic
    async def remove_provider(self, key: bytes, provider: PeerId) -> bool:
        t = provider_records
        ids = select(provider_peers.c.id).where(provider_peers.c.peer == provider.raw)
        async with self.engine.begin() as conn:
            result = await conn.execute(
                delete(t).where(t.c.key == key, t.c.provider_id.in_(ids.scalar_subquery()))
            )
            return bool(result.rowcount)

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


def _upsert_all(
    conn: Connection, records: Sequence[ProviderRecord], max_per_key: int
) -> list[bool]:
    """`add_providers` inside its transaction, on the synchronous connection: one hand-off to
    the database thread for the whole batch instead of several per record."""
    t = provider_records
    ids: dict[bytes, int] = {}
    stored = []
    for record in records:
        peer = record.provider.raw
        provider_id = ids.get(peer)
        if provider_id is None:
            conn.execute(insert(provider_peers).values(peer=peer).on_conflict_do_nothing())
            provider_id = conn.scalar(
                select(provider_peers.c.id).where(provider_peers.c.peer == peer)
            )
            assert provider_id is not None
            ids[peer] = provider_id
        others = conn.scalar(
            select(func.count())
            .select_from(t)
            .where(
                t.c.key == record.key,
                t.c.provider_id != provider_id,
                t.c.expires_at > record.received_at,
            )
        )
        if others is not None and others >= max_per_key:
            known = conn.scalar(
                select(func.count())
                .select_from(t)
                .where(t.c.key == record.key, t.c.provider_id == provider_id)
            )
            if not known:
                stored.append(False)
                continue
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
        conn.execute(stmt)
        stored.append(True)
    return stored
