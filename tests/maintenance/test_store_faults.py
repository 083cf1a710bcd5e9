"""Background tasks on a store that cannot write (real SQLite files; SQLite refuses every write
with SQLITE_READONLY while `query_only` is on): each logs, waits and tries again, survives, and
succeeds once the store heals, while the node keeps running."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import anyio
import pytest
from multiaddr import Multiaddr

from shardroute.clock import FakeClock
from shardroute.content import ContentId
from shardroute.identity.keys import Ed25519PrivateKey
from shardroute.identity.peer_id import PeerId
from shardroute.kad.repositories import ProviderRecord
from shardroute.maintenance.expiry import ExpirySweep
from shardroute.store.database import SqliteStore
from tests.support.nodes import address, loopback_app
from tests.support.polling import poll

pytestmark = pytest.mark.anyio
ADDRS = (Multiaddr("/ip4/198.51.100.7/tcp/4001"),)
INTERVAL = 60.0


def failures(caplog: pytest.LogCaptureFixture, text: str) -> int:
    return sum(text in r.getMessage() for r in caplog.records)


def key(i: int) -> bytes:
    return b"\x12\x20" + i.to_bytes(32, "big")


async def test_the_expiry_sweep_survives_a_store_that_cannot_write_and_sweeps_once_healed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    clock = FakeClock()
    store = await SqliteStore.open(tmp_path, max_providers_per_key=20)
    try:
        now = clock.wall()
        peer = PeerId.from_public_key(Ed25519PrivateKey.generate().public_key)
        expired = [ProviderRecord(key(i), peer, ADDRS, now - 100, now - 10) for i in range(3)]
        live = ProviderRecord(key(9), peer, ADDRS, now, now + 10 * INTERVAL)
        assert await store.providers.add_providers([*expired, live]) == [True] * 4
        sweep = ExpirySweep(
            providers=store.providers,
            values=store.values,
            clock=clock,
            interval=INTERVAL,
            max_value_age=48 * 3600.0,
        )
        await store.db.set_query_only(True)
        async with anyio.create_task_group() as tg:
            tg.start_soon(sweep.run)
            await clock.wait_sleepers(1, stall_limit=10)
            assert failures(caplog, "expiry sweep failed") == 1
            clock.advance(INTERVAL)
            await clock.wait_sleepers(1, stall_limit=10)
            assert failures(caplog, "expiry sweep failed") == 2  # it tried again, and lives
            # nothing could be deleted, and nothing expired is served meanwhile
            assert await store.providers.count() == 4
            assert await store.providers.get_providers(key(0), clock.wall(), 5) == []
            await store.db.set_query_only(False)
            clock.advance(INTERVAL)
            await clock.wait_sleepers(1, stall_limit=10)
            assert failures(caplog, "expiry sweep failed") == 2
            assert await store.providers.count() == 1  # the expired ones went, the live one stays
            tg.cancel_scope.cancel()
    finally:
        await store.close()


async def test_republishing_and_saving_the_table_retry_until_the_store_heals(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An announcement is acknowledged; then the store stops taking writes and a peer joins.
    The publisher provides the shard but cannot record that it did, the table cannot be
    saved: both log, back off and retry, and complete once the store takes writes again."""
    caplog.set_level(logging.WARNING)
    store = await SqliteStore.open(tmp_path, max_providers_per_key=20)
    async with loopback_app(storage=store) as node, loopback_app() as peer:
        shard = ContentId.from_shard_hash(os.urandom(32))
        assert await node.announce([shard]) == 1  # durable: acknowledged
        await store.db.set_query_only(True)
        await peer.node.connect(address(node))
        await poll("republishing failed", lambda: failures(caplog, "republishing failed") >= 1)
        await poll(
            "saving the table failed", lambda: failures(caplog, "saving the routing table") >= 1
        )
        assert await store.announcements.due_count(node.clock.wall()) == 1  # still due
        assert node.publisher.stats.passes == 0

        async def retried() -> bool:
            return failures(caplog, "republishing failed") >= 2

        await poll("republishing tried again", retried)
        await store.db.set_query_only(False)

        async def published() -> bool:
            return await store.announcements.due_count(node.clock.wall()) == 0

        await poll("the shard published and rescheduled", published, seconds=30)
        assert node.publisher.stats.passes >= 1
        now = peer.clock.wall()
        records = await peer.dht.providers.get_providers(shard.dht_key, now, 5)
        assert [r.provider for r in records] == [node.peer_id]

        async def saved() -> bool:
            return peer.peer_id in [p.peer for p in await store.routing.load()]

        await poll("the routing table saved", saved, seconds=30)
        assert await store.announcements.count() == 1  # the acknowledged one is kept
