"""The Dht's routing-table service: who gets in, probes of full buckets, evictions, diversity."""

from __future__ import annotations

from collections import Counter

import pytest
from multiaddr import Multiaddr

from shardroute.identity.peer_id import PeerId
from shardroute.kad.dht import DhtConfig
from shardroute.kad.keyspace import Key, common_prefix_len
from shardroute.kad.memory_transport import NodeState
from shardroute.kad.messages import KadMessage, MessageType, PeerInfo
from tests.support.cluster import Cluster, Member, random_peer_id

pytestmark = pytest.mark.anyio


async def _bucket0_nodes(cluster: Cluster, center: Member, n: int) -> list[Member]:
    """Server nodes whose ids share no prefix bit with `center` (all land in bucket 0)."""
    out: list[Member] = []
    own = Key.for_peer(center.peer_id)
    while len(out) < n:
        pid = random_peer_id(cluster.rng)
        if common_prefix_len(own, Key.for_peer(pid)) == 0:
            out.append(await cluster.add_node(peer_id=pid))
    return out


async def _seen(center: Member, other: Member) -> None:
    await center.dht.peer_seen(other.peer_id, other.endpoint.self_addrs(), is_server=True)


async def test_full_bucket_probes_least_recently_seen_and_keeps_it_if_alive() -> None:
    async with Cluster(seed=31) as cluster:
        center = await cluster.add_node(config=DhtConfig(k=2, diversity=False))
        p1, p2, p3 = await _bucket0_nodes(cluster, center, 3)
        await _seen(center, p1)
        await _seen(center, p2)
        table = center.dht.routing_table
        assert table.buckets[0] == [p1.peer_id, p2.peer_id]
        probes = cluster.network.delivered[MessageType.FIND_NODE]
        await _seen(center, p3)
        await cluster.network.settle()
        # Exactly one probe, to the least-recently-seen peer; it answered, so it stays.
        assert cluster.network.delivered[MessageType.FIND_NODE] == probes + 1
        assert cluster.network.connected(center.peer_id, p1.peer_id)
        assert not cluster.network.connected(center.peer_id, p2.peer_id)
        assert set(table.peers()) == {p1.peer_id, p2.peer_id}
        assert table.buckets[0][-1] == p1.peer_id  # now the most recently seen
        assert table.replacements(0) == [p3.peer_id]


async def test_full_bucket_evicts_a_dead_least_recently_seen_peer() -> None:
    async with Cluster(seed=32) as cluster:
        center = await cluster.add_node(config=DhtConfig(k=2, diversity=False))
        p1, p2, p3 = await _bucket0_nodes(cluster, center, 3)
        await _seen(center, p1)
        await _seen(center, p2)
        cluster.network.set_state(p1.peer_id, NodeState.DOWN)
        await _seen(center, p3)
        assert set(center.dht.routing_table.peers()) == {p2.peer_id, p3.peer_id}


async def test_unresponsive_least_recently_seen_peer_is_evicted_after_the_request_timeout() -> None:
    config = DhtConfig(k=2, diversity=False, request_timeout=0.05)
    async with Cluster(seed=33) as cluster:
        center = await cluster.add_node(config=config)
        p1, p2, p3 = await _bucket0_nodes(cluster, center, 3)
        await _seen(center, p1)
        await _seen(center, p2)
        cluster.network.set_state(p1.peer_id, NodeState.UNRESPONSIVE)
        await _seen(center, p3)
        assert set(center.dht.routing_table.peers()) == {p2.peer_id, p3.peer_id}


async def test_clients_never_enter_and_a_server_turning_client_leaves() -> None:
    async with Cluster(seed=34) as cluster:
        center = await cluster.add_node()
        other = await cluster.add_node()
        await center.dht.peer_seen(other.peer_id, other.endpoint.self_addrs(), is_server=False)
        assert other.peer_id not in center.dht.routing_table
        await _seen(center, other)
        assert other.peer_id in center.dht.routing_table
        # Identify push: it no longer lists the kad protocol.
        other.set_mode("client")
        await center.dht.peer_seen(other.peer_id, other.endpoint.self_addrs(), is_server=False)
        assert other.peer_id not in center.dht.routing_table
        # Ourselves: never.
        await center.dht.peer_seen(center.peer_id, center.endpoint.self_addrs(), is_server=True)
        assert center.peer_id not in center.dht.routing_table
        assert len(center.dht.routing_table) == 0


async def test_a_client_that_queries_a_server_is_not_added_by_it() -> None:
    async with Cluster(seed=35) as cluster:
        server = await cluster.add_node()
        client = await cluster.add_node(mode="client")
        assert client.dht.mode == "client"
        await cluster.bootstrap(client, [server])
        assert server.peer_id in client.dht.routing_table
        assert client.peer_id not in server.dht.routing_table
        # Switching to server mode and identifying again gets it in.
        client.set_mode("server")
        await _seen(server, client)
        assert client.peer_id in server.dht.routing_table


async def test_repeated_failures_evict_and_backfill_from_the_replacement_cache() -> None:
    async with Cluster(seed=36) as cluster:
        center = await cluster.add_node(config=DhtConfig(k=2, diversity=False, max_failures=2))
        p1, p2, p3 = await _bucket0_nodes(cluster, center, 3)
        for p in (p1, p2, p3):
            await _seen(center, p)  # p3 waits in the replacement cache (p1 answered the probe)
        table = center.dht.routing_table
        assert p3.peer_id not in table
        center.dht.peer_failed(p2.peer_id)
        assert p2.peer_id in table
        center.dht.peer_failed(p2.peer_id)
        assert set(table.peers()) == {p1.peer_id, p3.peer_id}


async def test_handler_answers_from_the_table_without_requester_or_self() -> None:
    async with Cluster(seed=37) as cluster:
        nodes = await cluster.build(30)
        center, asker = nodes[0], nodes[1]
        reply = await asker.endpoint.request(
            center.endpoint.info(),
            KadMessage(type=MessageType.FIND_NODE, key=b"some key"),
            timeout=1,
        )
        ids = [p.peer_id for p in reply.closer_peers]
        assert ids
        assert asker.peer_id not in ids and center.peer_id not in ids
        assert set(ids) <= set(center.dht.routing_table.peers())
        for info in reply.closer_peers:
            assert info.addrs == tuple(cluster.node(info.peer_id).endpoint.self_addrs())


def _public(i: int, j: int) -> list[Multiaddr]:
    return [Multiaddr(f"/ip4/44.{i}.{j}.1/tcp/4001")]


async def test_diversity_caps_one_ip_group_in_the_table() -> None:
    config = DhtConfig(diversity=True)
    async with Cluster(seed=38, config=config) as cluster:
        center = await cluster.add_node()
        own = Key.for_peer(center.peer_id)
        # One peer per bucket (cpl 0…4), so only the per-table cap can bite.
        peers: dict[int, PeerId] = {}
        while len(peers) < 5:
            pid = random_peer_id(cluster.rng)
            cpl = common_prefix_len(own, Key.for_peer(pid))
            if cpl < 5:
                peers.setdefault(cpl, pid)
        for j, peer in enumerate(peers.values()):
            await center.dht.peer_seen(peer, _public(7, j), is_server=True)
        # Five peers of 44.7.0.0/16: three fit in the table (go: 3 per group per table).
        assert len(center.dht.routing_table) == 3
        other = random_peer_id(cluster.rng)
        await center.dht.peer_seen(other, _public(8, 1), is_server=True)
        assert other in center.dht.routing_table


class _Sybil:
    """Answers every FIND_NODE with a crowd from one /16 and two peers from elsewhere."""

    def __init__(self, crowd: list[PeerInfo], others: list[PeerInfo]) -> None:
        self.answer = tuple(crowd + others)

    async def handle(self, sender: PeerId, request: KadMessage) -> KadMessage:
        return KadMessage(type=request.type, closer_peers=self.answer)


async def test_lookups_drop_overrepresented_ip_groups_from_answers() -> None:
    config = DhtConfig(diversity=True, request_timeout=0.5)
    async with Cluster(seed=39, config=config) as cluster:
        center = await cluster.add_node()
        sybil_id = random_peer_id(cluster.rng)
        sybil = cluster.network.add_node(sybil_id, _public(1, 1))
        rng = cluster.rng
        crowd = [
            PeerInfo(peer_id=random_peer_id(rng), addrs=tuple(_public(9, j))) for j in range(4)
        ]
        others = [
            PeerInfo(peer_id=random_peer_id(rng), addrs=tuple(_public(10 + j, 1))) for j in range(2)
        ]
        sybil.serve(_Sybil(crowd, others))
        await center.dht.peer_seen(sybil_id, sybil.self_addrs(), is_server=True)
        report = await center.dht.get_closest_peers(b"target")
        # Asked: the sybil, then only the two diverse peers (they do not exist, so they fail).
        assert report.requests == 3
        assert [p.peer_id for p in report.peers] == [sybil_id]


async def test_lookup_answers_count_connected_peers_in_their_real_ip_group(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Diversity on lookup answers goes by where a connected peer's connection comes from:
    four peers the sybil puts in one /16 but that reach us from four are asked; five it spreads
    over five /16s but that all reach us from one are not."""
    config = DhtConfig(diversity=True, request_timeout=0.5)
    async with Cluster(seed=40, config=config) as cluster:
        center = await cluster.add_node()
        sybil_id = random_peer_id(cluster.rng)
        sybil = cluster.network.add_node(sybil_id, _public(1, 1))
        rng = cluster.rng
        spread = [PeerInfo(random_peer_id(rng), tuple(_public(9, j))) for j in range(4)]
        disguised = [PeerInfo(random_peer_id(rng), tuple(_public(20 + j, 1))) for j in range(5)]
        real = {p.peer_id: _public(30 + j, 1)[0] for j, p in enumerate(spread)}
        real |= {p.peer_id: _public(40, j)[0] for j, p in enumerate(disguised)}
        monkeypatch.setattr(center.endpoint, "remote_addr", real.get)
        sybil.serve(_Sybil(spread, disguised))
        await center.dht.peer_seen(sybil_id, sybil.self_addrs(), is_server=True)
        report = await center.dht.get_closest_peers(b"target")
        # Asked: the sybil and the four spread peers (they do not exist, so they fail).
        assert report.requests == 1 + len(spread)
        assert [p.peer_id for p in report.peers] == [sybil_id]


async def test_peers_that_answer_a_lookup_are_offered_to_the_table() -> None:
    async with Cluster(seed=40) as cluster:
        nodes = await cluster.build(30)
        newcomer = await cluster.add_node()
        newcomer.endpoint.on_connected = None  # no identify: only answers can teach it
        await _seen(newcomer, nodes[0])
        report = await newcomer.dht.get_closest_peers(newcomer.peer_id.raw)
        table = newcomer.dht.routing_table
        answered = {p.peer_id for p in report.peers}
        assert len(answered) == cluster.config.k
        assert answered <= set(table.peers())
        for peer in answered:
            entry = table.entry(peer)
            assert entry is not None and entry.last_useful is not None


class _Metrics:
    """A DhtMetrics that remembers everything."""

    def __init__(self) -> None:
        self.lookups: list[tuple[str, int, int, str]] = []
        self.requests: Counter[tuple[str, bool]] = Counter()
        self.sizes: list[int] = []
        self.evictions: list[str] = []

    def lookup_finished(
        self, op: str, *, duration: float, requests: int, rounds: int, outcome: str
    ) -> None:
        self.lookups.append((op, requests, rounds, outcome))

    def records_published(self, count: int) -> None:
        pass

    def request_finished(self, message_type: str, *, ok: bool) -> None:
        self.requests[(message_type, ok)] += 1

    def routing_table_size(self, size: int) -> None:
        self.sizes.append(size)

    def peer_evicted(self, reason: str) -> None:
        self.evictions.append(reason)


async def test_metrics_see_lookups_requests_table_size_and_evictions() -> None:
    config = DhtConfig(diversity=False, max_failures=1, request_timeout=0.05)
    async with Cluster(seed=41, config=config) as cluster:
        nodes = await cluster.build(32)
        metrics = _Metrics()
        node = await cluster.add_node(metrics=metrics)
        await _seen(node, nodes[0])
        report = await node.dht.get_closest_peers(node.peer_id.raw)
        await cluster.network.settle()
        assert metrics.lookups == [("find_node", report.requests, report.rounds, "found")]
        assert metrics.requests == Counter({("FIND_NODE", True): report.requests})
        assert metrics.sizes[-1] == len(node.dht.routing_table) > 1
        # A silent table peer fails its first request: one failure evicts it (max_failures=1).
        victim = node.dht.routing_table.peers()[0]
        cluster.network.set_state(victim, NodeState.UNRESPONSIVE)
        await node.dht.get_closest_peers(victim.raw)
        assert metrics.requests[("FIND_NODE", False)] == 1
        assert metrics.evictions == ["failures"]
        assert metrics.sizes[-1] == len(node.dht.routing_table)
        # A table peer that leaves server mode.
        leaver = node.dht.routing_table.peers()[0]
        await node.dht.peer_seen(leaver, [], is_server=False)
        assert metrics.evictions == ["failures", "left_server_mode"]
