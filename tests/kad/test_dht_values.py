"""put_value / get_value through the Dht: validation, quorum, select and entry correction."""

from __future__ import annotations

import pytest

from shardroute.errors import InvalidRecord
from shardroute.identity.peer_id import PeerId
from shardroute.kad.keyspace import Key, common_prefix_len
from shardroute.kad.memory_transport import RequestHandler
from shardroute.kad.messages import KadMessage, MessageType, ValueRecord
from tests.support.cluster import Cluster, Member, ipns_record, pk_record, random_peer_id

pytestmark = pytest.mark.anyio


async def _holders(cluster: Cluster, key: bytes) -> dict[PeerId, bytes]:
    found = {}
    for node in cluster.nodes:
        stored = await node.values.get(key)
        if stored is not None:
            found[node.peer_id] = stored.value
    return found


def _outsider(cluster: Cluster, nodes: list[Member], key: bytes) -> Member:
    """A node that is not among the k closest to `key` (so it holds nothing after a put)."""
    near = set(cluster.true_closest(key))
    return next(n for n in nodes if n.peer_id not in near)


async def test_put_then_get_a_pk_record() -> None:
    async with Cluster(seed=41) as cluster:
        nodes = await cluster.build(64)
        key, value = pk_record()
        writer = _outsider(cluster, nodes, key)
        report = await writer.dht.put_value(key, value)
        closest = cluster.true_closest(key, exclude=writer.peer_id)
        assert [p.peer_id for p in report.peers] == closest
        assert report.accepted == cluster.config.k
        holders = await _holders(cluster, key)
        assert set(holders) == {*closest, writer.peer_id}
        assert set(holders.values()) == {value}
        reader = next(n for n in nodes if n.peer_id not in holders)
        assert await reader.dht.get_value(key) == value


async def test_quorum_stops_the_lookup_and_a_local_value_counts() -> None:
    async with Cluster(seed=42) as cluster:
        nodes = await cluster.build(64)
        key, value = pk_record()
        await nodes[0].dht.put_value(key, value)
        holders = await _holders(cluster, key)
        reader = next(n for n in nodes if n.peer_id not in holders)
        full = await reader.dht.search_value(key, quorum=0)
        assert full.value == value and full.responses == cluster.config.k
        three = await reader.dht.search_value(key, quorum=3)
        assert three.value == value and three.responses == 3
        assert three.requests < full.requests
        # A holder answers quorum 1 from its own store without a single request.
        holder = cluster.node(next(iter(await _holders(cluster, key))))
        before = sum(cluster.network.delivered.values())
        one = await holder.dht.search_value(key, quorum=1)
        assert one.value == value and one.responses == 1 and one.requests == 0
        assert sum(cluster.network.delivered.values()) == before


async def test_entry_correction_spreads_the_best_ipns_record() -> None:
    async with Cluster(seed=43) as cluster:
        nodes = await cluster.build(64)
        key, old = ipns_record(sequence=1)
        _, new = ipns_record(sequence=2)
        writer = _outsider(cluster, nodes, key)
        await writer.dht.put_value(key, old)
        holders = await _holders(cluster, key)
        assert set(holders.values()) == {old}
        # Only three holders hear of the new record.
        closest = cluster.true_closest(key)
        for peer in closest[:3]:
            reply = await writer.endpoint.request(
                cluster.node(peer).endpoint.info(),
                KadMessage(
                    type=MessageType.PUT_VALUE, key=key, record=ValueRecord(key=key, value=new)
                ),
                timeout=1,
            )
            assert reply.record is not None and reply.record.value == new
        reader = next(n for n in nodes if n.peer_id not in holders)
        report = await reader.dht.search_value(key, quorum=0)
        assert report.value == new
        # Everyone of the k closest that answered with the old record (or none) got the new one.
        assert report.corrected >= cluster.config.k - 3
        after = await _holders(cluster, key)
        for peer in cluster.true_closest(key, exclude=reader.peer_id):
            assert after[peer] == new


async def test_invalid_records_are_refused_and_never_stored() -> None:
    async with Cluster(seed=44) as cluster:
        nodes = await cluster.build(32)
        key, value = pk_record()
        with pytest.raises(InvalidRecord):
            await nodes[0].dht.put_value(key, value + b"tampered")
        with pytest.raises(InvalidRecord):
            await nodes[0].dht.put_value(b"/unknown-namespace/x", b"v")
        assert await _holders(cluster, key) == {}
        assert await _holders(cluster, b"/unknown-namespace/x") == {}


async def test_worse_record_than_the_local_one_is_refused() -> None:
    async with Cluster(seed=45) as cluster:
        nodes = await cluster.build(32)
        key, old = ipns_record(sequence=1)
        _, new = ipns_record(sequence=2)
        await nodes[0].dht.put_value(key, new)
        with pytest.raises(InvalidRecord):
            await nodes[0].dht.put_value(key, old)
        assert set((await _holders(cluster, key)).values()) == {new}


class _Liar:
    """Answers GET_VALUE with an invalid record for the key; otherwise behaves like `inner`."""

    def __init__(self, inner: RequestHandler, bad: bytes) -> None:
        self.inner = inner
        self.bad = bad
        self.asked = 0

    async def handle(self, sender: PeerId, request: KadMessage) -> KadMessage | None:
        reply = await self.inner.handle(sender, request)
        if request.type is MessageType.GET_VALUE:
            self.asked += 1
            assert reply is not None
            return KadMessage(
                type=reply.type,
                key=request.key,
                record=ValueRecord(key=request.key, value=self.bad),
                closer_peers=reply.closer_peers,
            )
        return reply


async def test_invalid_answers_are_ignored_by_get_value() -> None:
    async with Cluster(seed=46) as cluster:
        nodes = await cluster.build(32)
        key, value = pk_record()
        target = Key.for_bytes(key)
        # A liar placed right next to the key, so every lookup for it asks the liar.
        while True:
            liar_id = random_peer_id(cluster.rng)
            if common_prefix_len(Key.for_peer(liar_id), target) >= 8:
                break
        liar = await cluster.add_node(peer_id=liar_id)
        await cluster.bootstrap(liar, nodes[:3])
        lying = _Liar(liar.dht.handler, value + b"forged")
        liar.endpoint.serve(lying)
        writer = _outsider(cluster, nodes, key)
        await writer.dht.put_value(key, value)
        holders = await _holders(cluster, key)
        reader = next(n for n in nodes if n.peer_id not in holders)
        report = await reader.dht.search_value(key, quorum=0)
        assert lying.asked >= 1
        assert report.value == value
        for node in cluster.nodes:
            stored = await node.values.get(key)
            assert stored is None or stored.value == value
