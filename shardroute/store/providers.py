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
from shardroute.kad.repositories import ProviderQuota, ProviderRecord, ReceivedRecord, Refusal
from shardroute.store.codec import pack_addrs, unpack_addrs
from shardroute.store.repository import Repository, atomic
from shardroute.store.schema import provider_groups, provider_peers, provider_records

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
    async def accept_providers(
        self, received: Sequence[ReceivedRecord], quota: ProviderQuota
    ) -> list[Refusal | None]:
        """Records from peers, each under the caps, one transaction per `WRITE_BATCH`; soft
        state, so committed without fsync (synchronous=NORMAL: a crash of the machine may lose
        the last few, which their providers republish; the database stays consistent)."""
        outcome: list[Refusal | None] = []
        try:
            for start in range(0, len(received), WRITE_BATCH):
                async with self.engine.begin() as conn:
                    await conn.exec_driver_sql("PRAGMA synchronous=NORMAL")
                    chunk = received[start : start + WRITE_BATCH]
                    outcome += await conn.run_sync(_accept_all, chunk, self.max_per_key, quota)
        finally:
            async with self.engine.connect() as conn:
                await conn.exec_driver_sql("PRAGMA synchronous=FULL")
        return outcome

    @atomic
    async def sweep_orphans(self) -> int:
        """Delete provider_peers rows no record refers to (their counts are kept by triggers)."""
        async with self.engine.begin() as conn:
            result = await conn.execute(delete(provider_peers).where(provider_peers.c.records <= 0))
            await conn.execute(delete(provider_groups).where(provider_groups.c.records <= 0))
            return int(result.rowcount or 0)

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
        """Delete up to `batch` expired records (peers rows stay until `sweep_orphans`)."""
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
        provider_id = _provider_id(conn, record.provider.raw, ids)
        others = conn.scalar(
            select(func.count())
            .select_from(t)
            .where(
                t.c.key == record.key,
                t.c.provider_id != provider_id,
                t.c.expires_at > record.received_at,
            )
        )
        if others is not None and others >= max_per_key and not _held(conn, record, provider_id):
            stored.append(False)
            continue
        _upsert(conn, record, provider_id)
        stored.append(True)
    return stored


def _held(conn: Connection, record: ProviderRecord, provider_id: int) -> bool:
    t = provider_records
    query = select(func.count()).select_from(t)
    return bool(conn.scalar(query.where(t.c.key == record.key, t.c.provider_id == provider_id)))


def _upsert(
    conn: Connection, record: ProviderRecord, provider_id: int, source_group: str | None = None
) -> None:
    """Insert the record, or refresh its addresses and times (its source group stays)."""
    t = provider_records
    stmt = insert(t).values(
        key=record.key,
        provider_id=provider_id,
        addrs=pack_addrs(record.addrs),
        received_at=record.received_at,
        expires_at=record.expires_at,
        addrs_expire_at=record.addrs_expire_at,
        source_group=source_group,
    )
    conn.execute(
        stmt.on_conflict_do_update(
            index_elements=[t.c.key, t.c.provider_id],
            set_={
                "addrs": stmt.excluded.addrs,
                "received_at": stmt.excluded.received_at,
                "expires_at": stmt.excluded.expires_at,
                "addrs_expire_at": stmt.excluded.addrs_expire_at,
            },
        )
    )


def _provider_id(conn: Connection, peer: bytes, ids: dict[bytes, int]) -> int:
    provider_id = ids.get(peer)
    if provider_id is None:
        conn.execute(insert(provider_peers).values(peer=peer).on_conflict_do_nothing())
        provider_id = conn.scalar(select(provider_peers.c.id).where(provider_peers.c.peer == peer))
        assert provider_id is not None
        ids[peer] = provider_id
    return provider_id


def _accept_all(
    conn: Connection,
    received: Sequence[ReceivedRecord],
    max_per_key: int,
    quota: ProviderQuota,
) -> list[Refusal | None]:
    """`accept_providers` inside its transaction. A (key, provider) already held is
    refreshed whatever the quotas say; a new one must fit every cap."""
    ids: dict[bytes, int] = {}
    outcome: list[Refusal | None] = []
    for item in received:
        record, group = item.record, item.source_group
        provider_id = _provider_id(conn, record.provider.raw, ids)
        if not _held(conn, record, provider_id):
            refusal = _refusal(conn, record, provider_id, group, max_per_key, quota)
            if refusal is not None:
                outcome.append(refusal)
                continue
        _upsert(conn, record, provider_id, group)
        outcome.append(None)
    return outcome


def _refusal(
    conn: Connection,
    record: ProviderRecord,
    provider_id: int,
    group: str | None,
    max_per_key: int,
    quota: ProviderQuota,
) -> Refusal | None:
    t = provider_records
    live_on_key = (t.c.key == record.key) & (t.c.expires_at > record.received_at)
    if (conn.scalar(select(func.count()).select_from(t).where(live_on_key)) or 0) >= max_per_key:
        return Refusal.KEY_FULL
    records = conn.scalar(
        select(provider_peers.c.records).where(provider_peers.c.id == provider_id)
    )
    if (records or 0) >= quota.per_peer:
        return Refusal.PEER_QUOTA
    if group is None:
        return None
    in_group = conn.scalar(select(provider_groups.c.records).where(provider_groups.c.grp == group))
    if (in_group or 0) >= quota.per_group:
        return Refusal.GROUP_QUOTA
    same_group = conn.scalar(
        select(func.count()).select_from(t).where(live_on_key, t.c.source_group == group)
    )
    if (same_group or 0) >= quota.per_key_per_group:
        return Refusal.KEY_GROUP
    return None
