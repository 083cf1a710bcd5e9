"""Republishing and expiry over days of virtual time, with real nodes on 127.0.0.1."""

from __future__ import annotations

import dataclasses
import os
import random
from pathlib import Path

import anyio
import pytest

from shardroute.content import ContentId
from shardroute.identity.peer_id import PeerId
from shardroute.kad.keyspace import Key, closest
from shardroute.maintenance.republish import Publisher
from shardroute.store.database import SqliteStore
from tests.support.fleet import SETTINGS, Fleet, Member, fleet, grow

pytestmark = [pytest.mark.anyio, pytest.mark.network]
HOUR = 3600.0


async def announcer(crew: Fleet, tmp_path: Path) -> tuple[Member, Publisher, SqliteStore]:
    """A member on a real SQLite file whose publisher runs on the fleet's clock."""
    member = await crew.add([m.addr for m in crew.live[:3]], data_dir=tmp_path)
    store = member.app.storage
    assert isinstance(store, SqliteStore)
    return member, member.app.publisher, store


async def providers_of(finder: Member, key: bytes) -> list[PeerId]:
    with anyio.fail_after(30):
        return [p.peer_id async for p in finder.app.dht.find_providers(key, 1)]


async def test_findable_for_48_hours_then_gone_12_hours_after_its_provider_stopped(
    tmp_path: Path,
) -> None:
    settings = dataclasses.replace(SETTINGS, refresh_interval=4 * HOUR, expiry_interval=HOUR)
    rng = random.Random(48)
    async with fleet(settings) as crew:
        await grow(crew, 19)
        shard = ContentId.from_shard_hash(os.urandom(32))
        dropped = ContentId.from_shard_hash(os.urandom(32))  # withdrawn after 6 h
        member, publisher, _ = await announcer(crew, tmp_path)
        await publisher.announce([shard, dropped])
        with anyio.fail_after(30):
            await publisher.drained()
        await crew.settle()
        others = [m for m in crew.live if m is not member]
        withdrawn_at = None
        for probe in range(96):  # every 30 min for 48 h
            await crew.run_for(HOUR / 2)
            finder = rng.choice(others)
            found = await providers_of(finder, shard.dht_key)
            assert found == [member.app.peer_id], f"not found at {(probe + 1) / 2} h"
            if probe == 11:
                assert await providers_of(finder, dropped.dht_key) == [member.app.peer_id]
                assert await publisher.withdraw([dropped]) == 1
                withdrawn_at = crew.clock.monotonic()
            elif withdrawn_at and crew.clock.monotonic() - withdrawn_at > 12 * HOUR:
                # its last republish came before the withdrawal, so its copies are gone
                assert await providers_of(finder, dropped.dht_key) == [], (
                    f"withdrawn shard still found at {(probe + 1) / 2} h"
                )
        assert publisher.stats.shards >= 48 * HOUR // publisher.cycle + 1
        await crew.kill(member)
        stopped = crew.clock.monotonic()
        expired_before = sum(m.app.metrics.expired_records_total._value.get() for m in others)
        while crew.clock.monotonic() - stopped < 14 * HOUR:
            await crew.run_for(HOUR / 4)
            since = crew.clock.monotonic() - stopped
            found = await providers_of(rng.choice(others), shard.dht_key)
            if since > 12 * HOUR:
                assert found == [], f"still found {since / HOUR:.2f} h after the provider stopped"
        expired = sum(m.app.metrics.expired_records_total._value.get() for m in others)
        assert expired - expired_before >= 10  # the receivers' copies were swept from stores


@pytest.mark.timeout(900)  # 100 nodes and 400,000 ADD_PROVIDERs in one process
async def test_republishing_10000_shards_costs_few_lookups_and_all_stay_findable(
    tmp_path: Path,
) -> None:
    # Refresh is proven elsewhere; here it would only add traffic to wait for.
    settings = dataclasses.replace(SETTINGS, refresh_interval=24 * HOUR, expiry_interval=HOUR)
    rng = random.Random(100)
    async with fleet(settings) as crew:
        await grow(crew, 99)
        member, publisher, store = await announcer(crew, tmp_path)
        shards = [ContentId.from_shard_hash(os.urandom(32)) for _ in range(10_000)]
        for start in range(0, len(shards), 1000):
            await publisher.announce(shards[start : start + 1000])
        with anyio.fail_after(120):
            await publisher.drained()
        await crew.settle()
        assert await store.announcements.due_count(crew.clock.wall()) == 0
        first = dataclasses.replace(publisher.stats)
        assert first.shards == len(shards)
        # One cycle: each shard's next slot falls in it once (taken a window early at most).
        await crew.run_for(publisher.cycle + publisher.window())
        cycle_shards = publisher.stats.shards - first.shards
        cycle_lookups = publisher.stats.lookups - first.lookups
        assert abs(cycle_shards - len(shards)) <= len(shards) // 100
        assert publisher.stats.failed == 0
        ratio = cycle_lookups / cycle_shards
        print(
            f"\nrepublish of {cycle_shards} shards on 100 nodes: {cycle_lookups} lookups "
            f"({ratio:.4f} per shard), {publisher.stats.messages - first.messages} messages; "
            f"first publish: {first.lookups} lookups"
        )
        assert ratio < 0.01
        metrics = member.app.metrics.registry
        assert metrics.get_sample_value("shardroute_republish_lookups_total") == (
            publisher.stats.lookups
        )
        assert metrics.get_sample_value(
            "shardroute_republished_shards_total", {"result": "stored"}
        ) == (publisher.stats.shards)

        # Every shard sits on its true 20 closest nodes ...
        everyone = [m.app.peer_id for m in crew.live]
        stores = {m.app.peer_id: m.app.dht.providers for m in crew.live}
        now = crew.clock.wall()
        misplaced = 0
        for shard in shards:
            for peer in closest(Key.for_bytes(shard.dht_key), everyone, 20):
                held = await stores[peer].get_providers(shard.dht_key, now, 100)
                misplaced += member.app.peer_id not in {r.provider for r in held}
        assert misplaced == 0
        # ... and lookups from other nodes find it.
        others = [m for m in crew.live if m is not member]
        for shard in rng.sample(shards, 200):
            found = await providers_of(rng.choice(others), shard.dht_key)
            assert found == [member.app.peer_id]
