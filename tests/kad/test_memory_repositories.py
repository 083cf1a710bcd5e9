from __future__ import annotations

import random

import pytest
from multiaddr import Multiaddr

from shardroute.identity.keys import Ed25519PrivateKey
from shardroute.identity.peer_id import PeerId
from shardroute.kad.memory_repositories import (
    MemoryProviderStore,
    MemoryRoutingTableStore,
    MemoryValueStore,
)
from shardroute.kad.repositories import (
    ProviderRecord,
    ProviderStore,
    RoutingTableStore,
    SavedPeer,
    ValueStore,
)

pytestmark = pytest.mark.anyio

ADDRS = (Multiaddr("/ip4/10.0.0.1/tcp/4001"),)
KEY = b"\x12\x20" + bytes(32)
PEERS = [
    PeerId.from_public_key(Ed25519PrivateKey.from_seed(bytes([i]) * 32).public_key)
    for i in range(1, 13)
]


def record(
    peer: PeerId,
    *,
    key: bytes = KEY,
    at: float = 100.0,
    ttl: float = 50.0,
    addr_ttl: float | None = 20.0,
) -> ProviderRecord:
    return ProviderRecord(
        key=key,
        provider=peer,
        addrs=ADDRS,
        received_at=at,
        expires_at=at + ttl,
        addrs_expire_at=None if addr_ttl is None else at + addr_ttl,
    )


def test_memory_twins_satisfy_the_store_protocols() -> None:
    # mypy checks these assignments; the test keeps them from being dead code.
    providers: ProviderStore = MemoryProviderStore()
    values: ValueStore = MemoryValueStore()
    table: RoutingTableStore = MemoryRoutingTableStore()
    assert providers and values and table


async def test_providers_upsert_expire_and_lose_addresses_on_their_own_ttl() -> None:
    store = MemoryProviderStore()
    assert await store.add_provider(record(PEERS[0], at=100.0))
    assert await store.add_provider(record(PEERS[0], at=110.0))  # upsert, same pair
    assert await store.count() == 1
    (held,) = await store.get_providers(KEY, 120.0, 10)
    assert held.received_at == 110.0 and held.addrs == ADDRS
    (held,) = await store.get_providers(KEY, 130.0, 10)  # addresses past 110 + 20
    assert held.addrs == () and held.provider == PEERS[0]
    assert await store.get_providers(KEY, 160.0, 10) == []  # record past 110 + 50
    assert await store.get_providers(b"other", 120.0, 10) == []
    # A record without an address TTL keeps its addresses as long as it lives.
    await store.add_provider(record(PEERS[1], key=b"k2", addr_ttl=None))
    (held,) = await store.get_providers(b"k2", 149.0, 10)
    assert held.addrs == ADDRS


async def test_get_providers_limit_and_random_order() -> None:
    store = MemoryProviderStore(rng=random.Random(7))
    for peer in PEERS:
        await store.add_provider(record(peer))
    assert await store.get_providers(KEY, 120.0, 0) == []
    assert len(await store.get_providers(KEY, 120.0, 5)) == 5
    orders = {
        tuple(r.provider for r in await store.get_providers(KEY, 120.0, len(PEERS)))
        for _ in range(5)
    }
    assert len(orders) > 1 and all(set(o) == set(PEERS) for o in orders)


async def test_per_key_cap_refuses_newcomers_but_refreshes_holders() -> None:
    store = MemoryProviderStore(max_per_key=3)
    for peer in PEERS[:3]:
        assert await store.add_provider(record(peer))
    assert not await store.add_provider(record(PEERS[3], at=110.0))  # full
    assert await store.add_provider(record(PEERS[0], at=110.0))  # a holder re-announces
    assert await store.add_provider(record(PEERS[3], key=b"other"))  # other keys unaffected
    held = {r.provider for r in await store.get_providers(KEY, 120.0, 10)}
    assert held == set(PEERS[:3])
    # Expired holders no longer count: PEERS[1] and [2] expired at 150, PEERS[0] lives to 160.
    assert await store.add_provider(record(PEERS[4], at=155.0))
    assert await store.add_provider(record(PEERS[5], at=155.0))
    assert not await store.add_provider(record(PEERS[6], at=155.0))
    held = {r.provider for r in await store.get_providers(KEY, 156.0, 10)}
    assert held == {PEERS[0], PEERS[4], PEERS[5]}
    with pytest.raises(ValueError):
        MemoryProviderStore(max_per_key=0)


async def test_provider_expiry_runs_in_bounded_batches() -> None:
    store = MemoryProviderStore()
    for i, peer in enumerate(PEERS[:10]):
        # Two keys; the first 7 providers expire at 150, the last 3 at 300.
        key = KEY if i % 2 else b"other"
        await store.add_provider(record(peer, key=key, ttl=50.0 if i < 7 else 200.0))
    assert await store.expire(150.0, 0) == 0
    assert await store.expire(150.0, 3) == 3
    assert await store.count() == 7
    assert await store.expire(150.0, 3) == 3
    assert await store.expire(150.0, 3) == 1  # only one expired record was left
    assert await store.expire(150.0, 3) == 0
    assert await store.count() == 3
    remaining = await store.get_providers(KEY, 150.0, 10) + await store.get_providers(
        b"other", 150.0, 10
    )
    assert {r.provider for r in remaining} == set(PEERS[7:10])
    assert await store.expire(1000.0, 100) == 3 and await store.count() == 0


async def test_values_put_get_and_batched_expiry() -> None:
    store = MemoryValueStore()
    assert await store.get(b"/pk/a") is None
    await store.put(b"/pk/a", b"one", 100.0)
    await store.put(b"/pk/a", b"two", 110.0)  # replaces
    stored = await store.get(b"/pk/a")
    assert stored is not None and (stored.value, stored.received_at) == (b"two", 110.0)
    for i in range(5):
        await store.put(f"/pk/{i}".encode(), b"v", 50.0 + i)
    assert await store.expire(53.0, 2) == 2  # received at 50, 51, 52 are older than 53
    assert await store.expire(53.0, 2) == 1
    assert await store.expire(53.0, 2) == 0
    assert await store.get(b"/pk/3") is not None and await store.get(b"/pk/a") is not None
    assert await store.get(b"/pk/0") is None


async def test_routing_table_snapshot_replaces_the_previous_one() -> None:
    store = MemoryRoutingTableStore()
    assert await store.load() == []
    first = [SavedPeer(PEERS[0], ADDRS, 10.0, 5.0), SavedPeer(PEERS[1], (), 11.0)]
    await store.save(first)
    first.append(SavedPeer(PEERS[2], ADDRS, 12.0))  # the store kept its own copy
    assert await store.load() == first[:2]
    await store.save([SavedPeer(PEERS[3], ADDRS, 13.0)])
    assert [p.peer for p in await store.load()] == [PEERS[3]]
