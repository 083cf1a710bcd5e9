"""64 shardroute nodes in one process, each with its own TCP listener on 127.0.0.1."""

from __future__ import annotations

import os
import random

import anyio
import pytest

from shardroute.clock import SystemClock
from shardroute.kad.keyspace import Key, closest
from tests.support.fleet import fleet
from tests.support.settings import loopback

pytestmark = [pytest.mark.anyio, pytest.mark.network]

NODES = 64
SEEDS = 4
SETTINGS = loopback(query_timeout=20.0)


async def test_lookups_find_the_true_closest_and_providers_are_found() -> None:
    rng = random.Random(7)
    async with fleet(SETTINGS, clock=SystemClock()) as crew:
        with anyio.fail_after(120):
            for _ in range(SEEDS):  # the seeds know each other
                await crew.add([m.addr for m in crew.members])
            seeds = [m.addr for m in crew.members]
            for i in range(NODES - SEEDS):
                await crew.add([seeds[i % SEEDS]], wait_joined=False)
            for member in crew.members:
                await member.app.joined.wait()
            nodes = [m.app for m in crew.members]
            # a second round of self-lookups once everyone is in
            async with anyio.create_task_group() as tg:
                for node in nodes:
                    tg.start_soon(node.dht.get_closest_peers, node.peer_id.raw)

        everyone = [n.peer_id for n in nodes]
        exact = 0
        queries = 30
        with anyio.fail_after(120):
            for _ in range(queries):
                key = os.urandom(34)
                asker = rng.choice(nodes)
                report = await asker.dht.get_closest_peers(key)
                want = closest(Key.for_bytes(key), [p for p in everyone if p != asker.peer_id], 20)
                exact += [p.peer_id for p in report.peers] == want
        assert exact >= 0.95 * queries, (
            f"only {exact}/{queries} lookups returned the true 20 closest"
        )

        with anyio.fail_after(120):
            for _ in range(10):
                key = b"\x12\x20" + os.urandom(32)
                provider, finder = rng.sample(nodes, 2)
                report = await provider.dht.provide(key)
                assert report.accepted >= 15
                found = [p.peer_id async for p in finder.dht.find_providers(key, 1)]
                assert found == [provider.peer_id]
