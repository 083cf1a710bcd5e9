"""Dht lookups, provide and find on in-memory networks of 64+ nodes."""

from __future__ import annotations

import hashlib
import logging
from contextlib import aclosing

import anyio
import pytest

from shardroute.errors import LocalProtocolError
from shardroute.kad.dht import DhtConfig, LookupReport
from shardroute.kad.keyspace import Key, closest
from shardroute.kad.memory_transport import NodeState
from shardroute.kad.messages import MessageType
from shardroute.obs.logging import current_context
from tests.support.cluster import Cluster

pytestmark = pytest.mark.anyio


def _cid_key(i: int) -> bytes:
    """A sha2-256 multihash, as ADD_PROVIDER / GET_PROVIDERS carry."""
    return b"\x12\x20" + hashlib.sha256(f"shard-{i}".encode()).digest()


async def test_lookups_return_the_true_k_closest() -> None:
    async with Cluster(seed=11) as cluster:
        nodes = await cluster.build(80)
        rng = cluster.rng
        exact = 0
        queries = 60
        for _ in range(queries):
            origin = rng.choice(nodes)
            key = rng.randbytes(34)
            report = await origin.dht.get_closest_peers(key)
            assert not report.timed_out
            assert report.requests >= 1 and report.rounds >= 1
            found = [p.peer_id for p in report.peers]
            # Sorted by distance, addresses known for every peer.
            assert all(p.addrs for p in report.peers)
            if found == cluster.true_closest(key, exclude=origin.peer_id):
                exact += 1
        assert exact >= 0.95 * queries, f"only {exact}/{queries} lookups found the true k closest"


async def test_tables_hold_only_servers_and_bootstrap_reaches_everyone() -> None:
    async with Cluster(seed=12) as cluster:
        nodes = await cluster.build(64)
        client = await cluster.add_node(mode="client")
        await cluster.bootstrap(client, nodes[:3])
        # The client learned the network, nobody learned the client.
        assert len(client.dht.routing_table) >= cluster.config.k
        for node in nodes:
            assert client.peer_id not in node.dht.routing_table
            assert node.peer_id not in node.dht.routing_table
        # Every server is known to someone (it would otherwise be invisible to lookups).
        known = {p for n in nodes for p in n.dht.routing_table.peers()}
        assert known == {n.peer_id for n in nodes}


async def test_provide_from_one_node_find_from_another_always_works() -> None:
    async with Cluster(seed=13, codec=True) as cluster:
        nodes = await cluster.build(64)
        rng = cluster.rng
        for i in range(12):
            provider, finder = rng.sample(nodes, 2)
            key = _cid_key(i)
            report = await provider.dht.provide(key)
            assert report.accepted == len(report.peers) == cluster.config.k
            assert [p.peer_id for p in report.peers] == cluster.true_closest(
                key, exclude=provider.peer_id
            )
            found = [info async for info in finder.dht.find_providers(key, 1)]
            assert [f.peer_id for f in found] == [provider.peer_id]
            assert found[0].addrs == tuple(provider.endpoint.self_addrs())


async def test_find_providers_stops_at_count_and_deduplicates() -> None:
    async with Cluster(seed=14) as cluster:
        nodes = await cluster.build(64)
        key = _cid_key(99)
        providers = nodes[:5]
        holders = set()
        for node in providers:
            holders |= {p.peer_id for p in (await node.dht.provide(key)).peers}
        # A finder without local records, so that both searches go to the network.
        finder = next(n for n in nodes[5:] if n.peer_id not in holders)
        reports: list[LookupReport] = []
        two = [i async for i in finder.dht.find_providers(key, 2, on_report=reports.append)]
        assert len(two) == 2
        assert len({i.peer_id for i in two}) == 2
        assert {i.peer_id for i in two} <= {n.peer_id for n in providers}
        # Stopping at the count took fewer requests than running the lookup out.
        everything = [i async for i in finder.dht.find_providers(key, 50, on_report=reports.append)]
        assert sorted(i.peer_id for i in everything) == sorted(n.peer_id for n in providers)
        assert reports[0].requests < reports[1].requests


async def test_find_providers_answers_locally_first_without_network() -> None:
    async with Cluster(seed=15) as cluster:
        nodes = await cluster.build(64)
        provider = nodes[5]
        key = _cid_key(5)
        await provider.dht.provide(key)
        before = sum(cluster.network.delivered.values())
        found = [i async for i in provider.dht.find_providers(key, 1)]
        assert [f.peer_id for f in found] == [provider.peer_id]
        assert sum(cluster.network.delivered.values()) == before


async def test_stopping_at_count_cancels_requests_in_flight() -> None:
    config = DhtConfig(diversity=False, request_timeout=30.0, query_timeout=30.0)
    async with Cluster(seed=16, config=config) as cluster:
        nodes = await cluster.build(64)
        key = _cid_key(16)
        provided = await nodes[0].dht.provide(key)
        holders = {p.peer_id for p in provided.peers}
        finder = next(n for n in nodes[1:] if n.peer_id not in holders)
        # Every other peer of the finder's first requests hangs: only a 30 s timeout ends those.
        first = finder.dht.routing_table.nearest(Key.for_bytes(key), config.alpha)
        hanging = [p for p in first[::2] if p != nodes[0].peer_id]
        assert set(first) - set(hanging) & holders, "someone answering holds the record"
        for peer in hanging:
            cluster.network.set_state(peer, NodeState.UNRESPONSIVE)
        with anyio.fail_after(5):
            found = [i async for i in finder.dht.find_providers(key, 1)]
        assert [f.peer_id for f in found] == [nodes[0].peer_id]
        await anyio.wait_all_tasks_blocked()
        assert cluster.network.in_flight == 0
        # A consumer that leaves early (count not reached) cancels the lookup too.
        with anyio.fail_after(5):
            async with aclosing(finder.dht.find_providers(key, 10)) as providers:
                async for info in providers:
                    assert info.peer_id == nodes[0].peer_id
                    assert cluster.network.in_flight > 0
                    break
        await anyio.wait_all_tasks_blocked()
        assert cluster.network.in_flight == 0


@pytest.mark.parametrize("stall_timeout", [0.2, 60.0])
async def test_silent_nearest_peers_delay_a_find_by_the_stall_timeout(stall_timeout: float) -> None:
    config = DhtConfig(
        diversity=False, request_timeout=30.0, query_timeout=30.0, stall_timeout=stall_timeout
    )
    async with Cluster(seed=18, config=config) as cluster:
        nodes = await cluster.build(64)
        key = _cid_key(18)
        provided = await nodes[0].dht.provide(key)
        holders = {p.peer_id for p in provided.peers} | {nodes[0].peer_id}
        finder = next(n for n in nodes[1:] if n.peer_id not in holders)
        # Every peer the find asks first is silent; only the request timeout (30 s) ends those.
        first = finder.dht.routing_table.nearest(Key.for_bytes(key), config.provider_alpha)
        for peer in first:
            cluster.network.set_state(peer, NodeState.UNRESPONSIVE)
        with anyio.move_on_after(3) as waited:
            found = [i async for i in finder.dht.find_providers(key, 1)]
        if stall_timeout < 1:
            assert not waited.cancelled_caught
            assert [f.peer_id for f in found] == [nodes[0].peer_id]
        else:  # the slots stay held: the control, that the silent peers hold the find
            assert waited.cancelled_caught


async def test_a_node_that_dropped_its_own_record_is_not_named_by_peers_copies() -> None:
    async with Cluster(seed=17) as cluster:
        nodes = await cluster.build(32)
        key = _cid_key(17)
        withdrawn, other = nodes[3], nodes[9]
        await withdrawn.dht.provide(key)
        await other.dht.provide(key)
        # as a withdrawal leaves it: our own record gone, peers' copies of it kept to their TTL
        assert await withdrawn.dht.providers.remove_provider(key, withdrawn.peer_id)
        reports: list[LookupReport] = []
        found = [i async for i in withdrawn.dht.find_providers(key, 2, on_report=reports.append)]
        assert [f.peer_id for f in found] == [other.peer_id]
        assert reports and reports[0].requests > 0  # it asked the peers that hold the copies


async def test_query_timeout_returns_partial_results() -> None:
    config = DhtConfig(diversity=False, request_timeout=5.0, query_timeout=0.2)
    async with Cluster(seed=17, config=config) as cluster:
        nodes = await cluster.build(64)
        origin = nodes[0]
        table = origin.dht.routing_table.peers()
        # Most of the origin's table goes silent; a few still answer.
        answering = set(table[:4])
        for peer in table[4:]:
            cluster.network.set_state(peer, NodeState.UNRESPONSIVE)
        with anyio.fail_after(3):
            report = await origin.dht.get_closest_peers(b"any key at all")
        assert report.timed_out
        assert report.peers, "the peers that answered before the timeout are returned"
        assert len(report.peers) < cluster.config.k
        assert report.requests > len(report.peers)
        assert answering & {p.peer_id for p in report.peers}


async def test_failed_requests_make_peers_unreachable_and_count_failures() -> None:
    config = DhtConfig(diversity=False, request_timeout=0.05, query_timeout=5.0, max_failures=1)
    async with Cluster(seed=18, config=config) as cluster:
        nodes = await cluster.build(64)
        origin = nodes[0]
        dead = origin.dht.routing_table.peers()[:5]
        for peer in dead:
            cluster.network.set_state(peer, NodeState.UNRESPONSIVE)
        for peer in dead:  # make sure each is asked at least once
            report = await origin.dht.get_closest_peers(peer.raw)
            assert not report.timed_out
            assert peer not in {p.peer_id for p in report.peers}
        # max_failures=1: one failed request evicts a peer.
        assert not set(dead) & set(origin.dht.routing_table.peers())


async def test_a_lookup_whose_k_nearest_table_peers_are_dead_reaches_live_ones() -> None:
    """Seeds beyond the k nearest are asked once nearer ones fail; with only k seeds this lookup
    ended after one round with nobody answering."""
    async with Cluster(seed=21) as cluster:
        nodes = await cluster.build(64)
        origin = nodes[0]
        key = b"a key whose neighbourhood went dark"
        dead = origin.dht.routing_table.nearest(Key.for_bytes(key), cluster.config.k)
        assert len(dead) == cluster.config.k < len(origin.dht.routing_table)
        for peer in dead:
            cluster.network.set_state(peer, NodeState.DOWN)
        report = await origin.dht.get_closest_peers(key)
        assert not report.timed_out
        found = [p.peer_id for p in report.peers]
        assert not set(found) & set(dead)
        live = [n.peer_id for n in cluster.servers() if n.peer_id not in dead]
        assert found == closest(Key.for_bytes(key), [p for p in live if p != origin.peer_id], 20)


async def test_find_peer_and_table_shortcut() -> None:
    async with Cluster(seed=19) as cluster:
        nodes = await cluster.build(64)
        origin = nodes[3]
        stranger = next(n for n in nodes[4:] if n.peer_id not in origin.dht.routing_table)
        info = await origin.dht.find_peer(stranger.peer_id)
        assert info is not None and info.addrs == tuple(stranger.endpoint.self_addrs())
        neighbour = origin.dht.routing_table.peers()[0]
        before = cluster.network.delivered[MessageType.FIND_NODE]
        assert (await origin.dht.find_peer(neighbour)) is not None
        assert cluster.network.delivered[MessageType.FIND_NODE] == before


async def test_provide_refuses_bad_keys_and_missing_addresses() -> None:
    async with Cluster(seed=20) as cluster:
        node = await cluster.add_node()
        with pytest.raises(LocalProtocolError):
            await node.dht.provide(b"x" * 81)
        with pytest.raises(LocalProtocolError):
            await node.dht.provide(b"")
        node.endpoint.addrs = []
        with pytest.raises(LocalProtocolError):
            await node.dht.provide(_cid_key(1))


async def test_provide_many_batches_one_stream_per_peer() -> None:
    async with Cluster(seed=21) as cluster:
        nodes = await cluster.build(64)
        keys = [_cid_key(100 + i) for i in range(6)]
        streams_before = cluster.network.streams
        adds_before = cluster.network.delivered[MessageType.ADD_PROVIDER]
        reports = await nodes[0].dht.provide_many(keys)
        assert [r.key for r in reports] == keys
        targets = {p.peer_id for r in reports for p in r.peers}
        assert cluster.network.streams - streams_before == len(targets)
        assert cluster.network.delivered[MessageType.ADD_PROVIDER] - adds_before == sum(
            len(r.peers) for r in reports
        )
        for i, key in enumerate(keys):
            finder = nodes[10 + i]
            found = [f async for f in finder.dht.find_providers(key, 1)]
            assert [f.peer_id for f in found] == [nodes[0].peer_id]


class _ContextRecorder(logging.Handler):
    """Records each line's message with the log context current when it was emitted."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[tuple[str, str | None]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((record.getMessage(), current_context().get("query_id")))


async def test_log_lines_of_one_lookup_share_a_query_id() -> None:
    config = DhtConfig(diversity=False, request_timeout=0.05)
    async with Cluster(seed=22, config=config) as cluster:
        nodes = await cluster.build(32)
        origin = nodes[0]
        silent = origin.dht.routing_table.peers()[0]
        cluster.network.set_state(silent, NodeState.UNRESPONSIVE)
        recorder = _ContextRecorder()
        logger = logging.getLogger("shardroute.kad")
        logger.addHandler(recorder)
        old_level = logger.level
        logger.setLevel(logging.DEBUG)
        try:
            await origin.dht.get_closest_peers(silent.raw)
            await origin.dht.get_closest_peers(b"another key")
        finally:
            logger.removeHandler(recorder)
            logger.setLevel(old_level)
        assert all(qid for _, qid in recorder.lines), recorder.lines
        summaries = [qid for msg, qid in recorder.lines if "requests" in msg and "rounds" in msg]
        assert len(summaries) == 2 and summaries[0] != summaries[1]
        # Lines logged in the worker tasks (the failed requests) carry their own lookup's id.
        first_failure = next(qid for msg, qid in recorder.lines if "failed" in msg)
        assert first_failure == summaries[0]
        for (msg, qid), (_, next_qid) in zip(recorder.lines, recorder.lines[1:], strict=False):
            if "failed" in msg:
                assert qid == next_qid
