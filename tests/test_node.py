"""Nodes (host + DHT) over loopback: modes, identify push and the routing table."""

from __future__ import annotations

import anyio
import pytest

from shardroute.app import App
from shardroute.config import Mode
from tests.support.nodes import address, loopback_app
from tests.support.settings import loopback

pytestmark = pytest.mark.anyio


def node(mode: Mode = "server") -> App:
    return loopback_app(loopback(mode=mode))


async def test_client_mode_neither_advertises_nor_answers_but_can_query() -> None:
    async with node() as server, node("client") as client:
        await client.node.connect(address(server))
        with anyio.fail_after(5):
            await server.host.wait_identified(client.peer_id)
        assert "/icn/kad/1.0.0" not in server.host.peerstore.protocols(client.peer_id)
        assert client.peer_id not in server.dht.routing_table
        assert server.peer_id in client.dht.routing_table  # a client still uses servers
        report = await client.dht.get_closest_peers(b"any key")
        assert [p.peer_id for p in report.peers] == [server.peer_id]


async def test_switching_to_server_mode_is_pushed_and_admits_the_peer() -> None:
    async with node() as server, node("client") as client:
        await client.node.connect(address(server))
        with anyio.fail_after(5):
            await server.host.wait_identified(client.peer_id)
        events = server.host.subscribe_identified()
        client.set_mode("server")
        with anyio.fail_after(5):
            while not (await events.receive()).pushed:
                pass
            while client.peer_id not in server.dht.routing_table:
                await server.dht.table_changed.wait()  # admission runs in the node's task group
        client.set_mode("client")
        with anyio.fail_after(5):
            while client.peer_id in server.dht.routing_table:
                await server.dht.table_changed.wait()


async def test_connection_and_stream_gauges_follow_the_host() -> None:
    async with node() as a, node() as b:
        await b.node.connect(address(a))

        def sample(n: App, name: str, **labels: str) -> float | None:
            return n.metrics.registry.get_sample_value(name, labels)

        assert sample(a, "shardroute_connections", direction="inbound") == 1
        assert sample(a, "shardroute_connections", direction="outbound") == 0
        assert sample(b, "shardroute_connections", direction="outbound") == 1
        stream = await b.host.new_stream(a.peer_id, ["/ipfs/ping/1.0.0"])
        assert sample(b, "shardroute_streams") == len(b.host.connection(a.peer_id).streams) >= 1  # type: ignore[union-attr]
        await stream.reset()
