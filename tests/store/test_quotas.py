"""Provider-record quotas on the SQLite store and its in-memory twin alike: per provider, per
source IP group, per key from one group; a refreshed record is never refused; counts survive
a migration and a restart; orphaned providers are swept."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from multiaddr import Multiaddr

from shardroute.identity.keys import Ed25519PrivateKey
from shardroute.identity.peer_id import PeerId
from shardroute.kad.fairness import default_quota
from shardroute.kad.memory_repositories import MemoryProviderStore
from shardroute.kad.repositories import ProviderRecord, ProviderStore, ReceivedRecord, Refusal
from shardroute.store.database import SqliteStore
from shardroute.store.engine import DATABASE_FILE, upgrade_database

pytestmark = pytest.mark.anyio
ADDRS = (Multiaddr("/ip4/198.51.100.7/tcp/4001"),)
QUOTA = default_quota(per_peer=5, per_group=8, per_key_per_group=2)


def pid() -> PeerId:
    return PeerId.from_public_key(Ed25519PrivateKey.generate().public_key)


def key(i: int) -> bytes:
    return b"\x12\x20" + i.to_bytes(32, "big")


def rec(k: bytes, peer: PeerId, at: float = 100.0, ttl: float = 1000.0) -> ProviderRecord:
    return ProviderRecord(k, peer, ADDRS, at, at + ttl)


@pytest.fixture(params=["sqlite", "memory"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ProviderStore]:
    if request.param == "memory":
        yield MemoryProviderStore(max_per_key=10)
        return
    sqlite_store = await SqliteStore.open(tmp_path, max_providers_per_key=10)
    yield sqlite_store.providers
    await sqlite_store.close()


async def test_one_provider_stops_at_its_quota_and_refreshes_what_it_holds(
    store: ProviderStore,
) -> None:
    peer = pid()
    outcome = await store.accept_providers(
        [ReceivedRecord(rec(key(i), peer)) for i in range(7)], QUOTA
    )
    assert outcome == [None] * 5 + [Refusal.PEER_QUOTA] * 2
    # a record it already has is refreshed, quota or not
    again = await store.accept_providers([ReceivedRecord(rec(key(0), peer, at=200.0))], QUOTA)
    assert again == [None]
    assert (await store.get_providers(key(0), 250.0, 5))[0].received_at == 200.0
    # expiry frees its quota
    assert await store.expire(now=1150.0, batch=100) == 4
    assert await store.accept_providers([ReceivedRecord(rec(key(9), peer, at=1150.0))], QUOTA) == [
        None
    ]


async def test_sybils_of_one_group_get_two_slots_of_a_key_and_eight_records_in_all(
    store: ProviderStore,
) -> None:
    sybils = [pid() for _ in range(20)]
    one_key = await store.accept_providers(
        [ReceivedRecord(rec(key(1), s), "ip4:203.0.0.0/16") for s in sybils], QUOTA
    )
    assert one_key == [None, None] + [Refusal.KEY_GROUP] * 18
    # the real provider, from elsewhere, still gets in
    real = pid()
    assert await store.accept_providers(
        [ReceivedRecord(rec(key(1), real), "ip4:192.0.0.0/16")], QUOTA
    ) == [None]
    spread = await store.accept_providers(
        [ReceivedRecord(rec(key(100 + i), s), "ip4:203.0.0.0/16") for i, s in enumerate(sybils)],
        QUOTA,
    )
    assert spread.count(None) == 6  # 8 per group, 2 already held
    assert set(spread[6:]) == {Refusal.GROUP_QUOTA}
    providers = {r.provider for r in await store.get_providers(key(1), 150.0, 20)}
    assert real in providers and len(providers) == 3
    # exempt senders (no group) are limited per peer only
    free = await store.accept_providers(
        [ReceivedRecord(rec(key(1), pid())) for _ in range(3)], QUOTA
    )
    assert free == [None] * 3


async def test_a_full_key_refuses_newcomers(store: ProviderStore) -> None:
    outcome = await store.accept_providers(
        [ReceivedRecord(rec(key(2), pid())) for _ in range(12)], QUOTA
    )
    assert outcome == [None] * 10 + [Refusal.KEY_FULL] * 2


async def test_counts_survive_migration_and_restart_and_orphans_are_swept(tmp_path: Path) -> None:
    path = tmp_path / DATABASE_FILE
    upgrade_database(path, "0003")
    peer = pid()
    with sqlite3.connect(path) as db:
        db.execute("insert into provider_peers (id, peer) values (1, ?)", (peer.raw,))
        for i in range(4):
            db.execute(
                "insert into provider_records values (?, 1, ?, 1.0, 2e9, null)",
                (key(i), b"\x08\x04\x7f\x00\x00\x01\x06\x0f\xa1"),
            )
    store = await SqliteStore.open(tmp_path, max_providers_per_key=10)
    quota = default_quota(per_peer=5)
    outcome = await store.providers.accept_providers(
        [ReceivedRecord(rec(key(10 + i), peer)) for i in range(3)], quota
    )
    assert outcome == [None, Refusal.PEER_QUOTA, Refusal.PEER_QUOTA]  # 4 migrated + 1
    await store.close()
    store = await SqliteStore.open(tmp_path, max_providers_per_key=10)
    assert await store.providers.accept_providers([ReceivedRecord(rec(key(20), peer))], quota) == [
        Refusal.PEER_QUOTA
    ]
    assert await store.providers.sweep_orphans() == 0
    assert await store.providers.expire(now=3e9, batch=100) == 5
    assert await store.providers.sweep_orphans() == 1
    with sqlite3.connect(path) as db:
        assert db.execute("select count(*) from provider_peers").fetchone() == (0,)
    await store.close()
