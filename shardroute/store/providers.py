"""Provider records this node keeps for others (ADD_PROVIDER received), and its own.

Writes are set-based: a batch of records costs a fixed handful of statements (the peers'
ids, the keys' current records, the groups' counts, one executemany upsert), all in one
hand-off to the database's worker thread (`Database.run`), and the caps are checked in memory
from what those reads returned.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial

import anyio.lowlevel

from shardroute.errors import StoreError
from shardroute.identity.peer_id import PeerId
from shardroute.kad.repositories import ProviderQuota, ProviderRecord, ReceivedRecord, Refusal
from shardroute.store.codec import pack_addrs, unpack_addrs
from shardroute.store.engine import Database
from shardroute.store.repository import Repository, atomic

_PROVIDERS_SQL = (
    "SELECT p.peer, r.addrs, r.received_at, r.expires_at, r.addrs_expire_at "
    "FROM provider_records r JOIN provider_peers p ON p.id = r.provider_id "
    "WHERE r.key = ? AND r.expires_at > ? ORDER BY random() LIMIT ?"
)
# A record's source group is the one it was first stored with: a refresh keeps it.
_UPSERT_SQL = (
    "INSERT INTO provider_records "
    "(key, provider_id, addrs, received_at, expires_at, addrs_expire_at, source_group) "
    "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (key, provider_id) DO UPDATE SET "
    "addrs = excluded.addrs, received_at = excluded.received_at, "
    "expires_at = excluded.expires_at, addrs_expire_at = excluded.addrs_expire_at"
)

# Records written per transaction.
WRITE_BATCH = 1000


def _marks(count: int) -> str:
    return ",".join("?" * count)


@dataclass(slots=True)
class _KeyRecords:
    """What a key holds now: its providers, and each record's expiry and source group."""

    held: dict[int, tuple[float, str | None]] = field(default_factory=dict)

    def live(self, at: float, *, group: str | None = None, besides: int | None = None) -> int:
        return sum(
            1
            for provider_id, (expires_at, grp) in self.held.items()
            if expires_at > at and provider_id != besides and (group is None or grp == group)
        )


class _Batch:
    """One transaction's view of the rows its records touch, kept current as it decides.
    Runs on the database's worker thread (`Database.run`), inside the transaction."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.ids: dict[bytes, int] = {}
        self.peer_records: dict[int, int] = {}
        self.keys: dict[bytes, _KeyRecords] = {}
        self.groups: dict[str, int] = {}
        self.rows: list[tuple[object, ...]] = []

    def load(self, records: Iterable[ProviderRecord], groups: Iterable[str]) -> None:
        records = list(records)
        peers = list(dict.fromkeys(r.provider.raw for r in records))
        # One statement for every peer's row, new or not (the no-op update makes RETURNING
        # name existing rows too).
        rows = self.conn.execute(
            f"INSERT INTO provider_peers (peer) VALUES {','.join(['(?)'] * len(peers))} "
            "ON CONFLICT (peer) DO UPDATE SET peer = excluded.peer RETURNING id, peer, records",
            peers,
        ).fetchall()
        for provider_id, peer, count in rows:
            self.ids[peer] = provider_id
            self.peer_records[provider_id] = count
        keys = list(dict.fromkeys(r.key for r in records))
        self.keys = {key: _KeyRecords() for key in keys}
        held = self.conn.execute(
            "SELECT key, provider_id, expires_at, source_group FROM provider_records "
            f"WHERE key IN ({_marks(len(keys))})",
            keys,
        )
        for key, provider_id, expires_at, group in held:
            self.keys[key].held[provider_id] = (expires_at, group)
        wanted = list(dict.fromkeys(groups))
        if wanted:
            counted = self.conn.execute(
                f"SELECT grp, records FROM provider_groups WHERE grp IN ({_marks(len(wanted))})",
                wanted,
            )
            for grp, count in counted:
                self.groups[grp] = count

    def store(self, record: ProviderRecord, group: str | None) -> None:
        """Queue the upsert and count it as the triggers will (a new row only)."""
        provider_id = self.ids[record.provider.raw]
        on_key = self.keys[record.key]
        if provider_id not in on_key.held:
            self.peer_records[provider_id] = self.peer_records.get(provider_id, 0) + 1
            if group is not None:
                self.groups[group] = self.groups.get(group, 0) + 1
            on_key.held[provider_id] = (record.expires_at, group)
        else:
            on_key.held[provider_id] = (record.expires_at, on_key.held[provider_id][1])
        self.rows.append(
            (
                record.key,
                provider_id,
                pack_addrs(record.addrs),
                record.received_at,
                record.expires_at,
                record.addrs_expire_at,
                group,
            )
        )

    def write(self) -> None:
        if self.rows:
            self.conn.executemany(_UPSERT_SQL, self.rows)


class SqliteProviderStore(Repository):
    name = "providers"

    def __init__(self, db: Database, *, max_per_key: int) -> None:
        self.db = db
        self.max_per_key = max_per_key
        self.reader: sqlite3.Connection | None = None

    async def add_provider(self, record: ProviderRecord) -> bool:
        return (await self.add_providers([record]))[0]

    @atomic
    async def add_providers(
        self, records: Sequence[ProviderRecord], *, durable: bool = True
    ) -> list[bool]:
        """Upsert many records, each under the per-key cap, in transactions of at most
        `WRITE_BATCH` (one fsync each unless not `durable`, and the write lock never held
        long); which were stored."""
        stored: list[bool] = []
        for start in range(0, len(records), WRITE_BATCH):
            chunk = records[start : start + WRITE_BATCH]
            stored += await self.db.run(partial(self._add, chunk), durable=durable)
        return stored

    def _add(self, chunk: Sequence[ProviderRecord], conn: sqlite3.Connection) -> list[bool]:
        batch = _Batch(conn)
        batch.load(chunk, ())
        stored: list[bool] = []
        for record in chunk:
            provider_id = batch.ids[record.provider.raw]
            on_key = batch.keys[record.key]
            full = on_key.live(record.received_at, besides=provider_id) >= self.max_per_key
            if full and provider_id not in on_key.held:
                stored.append(False)
                continue
            batch.store(record, None)
            stored.append(True)
        batch.write()
        return stored

    @atomic
    async def accept_providers(
        self, received: Sequence[ReceivedRecord], quota: ProviderQuota
    ) -> list[Refusal | None]:
        """Records from peers, each under the caps, one transaction per `WRITE_BATCH`; soft
        state, so committed without fsync (a crash of the machine may lose the last few, which
        their providers republish; the database stays consistent). A (key, provider) already
        held is refreshed whatever the quotas say; a new one must fit every cap."""
        outcome: list[Refusal | None] = []
        for start in range(0, len(received), WRITE_BATCH):
            chunk = received[start : start + WRITE_BATCH]
            outcome += await self.db.run(partial(self._accept, chunk, quota), durable=False)
        return outcome

    def _accept(
        self, chunk: Sequence[ReceivedRecord], quota: ProviderQuota, conn: sqlite3.Connection
    ) -> list[Refusal | None]:
        batch = _Batch(conn)
        batch.load(
            (item.record for item in chunk),
            (item.source_group for item in chunk if item.source_group is not None),
        )
        outcome: list[Refusal | None] = []
        for item in chunk:
            refusal = self._refusal(batch, item, quota)
            if refusal is None:
                batch.store(item.record, item.source_group)
            outcome.append(refusal)
        batch.write()
        return outcome

    def _refusal(self, batch: _Batch, item: ReceivedRecord, quota: ProviderQuota) -> Refusal | None:
        record, group = item.record, item.source_group
        provider_id = batch.ids[record.provider.raw]
        on_key = batch.keys[record.key]
        if provider_id in on_key.held:
            return None
        at = record.received_at
        if on_key.live(at) >= self.max_per_key:
            return Refusal.KEY_FULL
        if batch.peer_records.get(provider_id, 0) >= quota.per_peer:
            return Refusal.PEER_QUOTA
        if group is None:
            return None
        if batch.groups.get(group, 0) >= quota.per_group:
            return Refusal.GROUP_QUOTA
        if on_key.live(at, group=group) >= quota.per_key_per_group:
            return Refusal.KEY_GROUP
        return None

    @atomic
    async def sweep_orphans(self) -> int:
        """Delete provider_peers rows no record refers to (their counts are kept by triggers)."""
        async with self.db.transaction() as conn:
            cursor = await conn.execute("DELETE FROM provider_peers WHERE records <= 0")
            swept = cursor.rowcount
            await conn.execute("DELETE FROM provider_groups WHERE records <= 0")
            return max(0, swept)

    @atomic
    async def remove_provider(self, key: bytes, provider: PeerId) -> bool:
        removed = await self.db.delete(
            "DELETE FROM provider_records WHERE key = ? AND provider_id = "
            "(SELECT id FROM provider_peers WHERE peer = ?)",
            (key, provider.raw),
        )
        return removed > 0

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
        return await self.db.delete(
            "DELETE FROM provider_records WHERE (key, provider_id) IN "
            "(SELECT key, provider_id FROM provider_records WHERE expires_at <= ? LIMIT ?)",
            (now, batch),
        )

    @atomic
    async def count(self, now: float | None = None) -> int:
        """Records held; with `now`, only those not yet expired (what a GET_PROVIDERS sees)."""
        async with self.db.reading() as conn:
            if now is None:
                cursor = await conn.execute("SELECT count(*) FROM provider_records")
            else:
                cursor = await conn.execute(
                    "SELECT count(*) FROM provider_records WHERE expires_at > ?", (now,)
                )
            row = await cursor.fetchone()
            await cursor.close()
        return int(row[0]) if row else 0
