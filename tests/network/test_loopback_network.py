"""64 shardroute nodes in one process, each with its own TCP listener on 127.0.0.1."""

from __future__ import annotations

import dataclasses
import os
import random
from contextlib import AsyncExitStack

import anyio
import pytest

from shardroute.addrs import with_p2p
from shardroute.config import Settings
from shardroute.identity.keys import Ed25519PrivateKey
from shardroute.kad.keyspace import Key, closest
from shardroute.node import Node

pytestmark = [pytest.mark.anyio, pytest.mark.network]

NODES = 64
SEEDS = 4
SETTINGS = dataclasses.replace(
    Settings(), listen=("/ip4/127.0.0.1/tcp/0",), diversity_filter=False, query_timeout=20.0
)


async def test_lookups_find_the_true_closest_and_providers_are_found() -> None:
    rng = random.Random(7)
    async with AsyncExitStack() as stack:
        nodes = [
            await stack.enter_async_context(Node(SETTINGS, Ed25519PrivateKey.generate()))
            for _ in range(NODES)
        ]
        seeds = [with_p2p(n.host.listen_addrs[0], n.peer_id) for n in nodes[:SEEDS]]
        with anyio.fail_after(120):
            for seed in nodes[:SEEDS]:  # the seeds know each other
                for addr in seeds:
                    if not str(addr).endswith(str(seed.peer_id)):
                        await seed.connect(addr)
            async with anyio.create_task_group() as tg:
                for i, node in enumerate(nodes[SEEDS:]):
                    tg.start_soon(node.bootstrap, [seeds[i % SEEDS]])
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
