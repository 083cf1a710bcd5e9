"""Provider records this node keeps for others (ADD_PROVIDER received), and its own."""

from __future__ import annotations

import sqlite3
import time

import anyio.lowlevel
from sqlalchemy import delete, func, select
from sqlalchemy.dialects.sqlite import insert
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


class SqliteProviderStore(Repository):
    name = "providers"

    def __init__(self, engine: AsyncEngine, *, max_per_key: int) -> None:
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
