"""Lookups over simulated networks of 200-2000 nodes, each with its own routing table.

The bounds on requests and rounds are loose ceilings: a lookup that floods the network or
wanders hop after hop fails them. The measured figures are printed (pytest -s).
"""

from __future__ import annotations

import pytest

from shardroute.identity.peer_id import PeerId
from shardroute.kad.keyspace import Key
from shardroute.kad.lookup import PeerState
from tests.support.lookup_sim import LookupStats, SimNetwork


def _targets(net: SimNetwork, count: int) -> list[tuple[PeerId, Key]]:
    """Random origins, with random keys and (one in four) existing peers' keys as targets."""
    out = []
    for i in range(count):
        origin = net.rng.choice(net.peers)
        if i % 4 == 0:
            target = Key.for_peer(net.rng.choice(net.peers))
        else:
            target = Key(net.rng.randbytes(32))
        out.append((origin, target))
    return out


@pytest.fixture(scope="module")
def net2000() -> SimNetwork:
    return SimNetwork(2000, seed=2000)


@pytest.mark.parametrize(("size", "lookups"), [(200, 200), (2000, 100)])
def test_lookups_find_the_true_k_closest(
    size: int, lookups: int, net2000: SimNetwork, capsys: pytest.CaptureFixture[str]
) -> None:
    net = net2000 if size == 2000 else SimNetwork(size, seed=size)
    stats = LookupStats()
    for origin, target in _targets(net, lookups):
        lookup = net.run(origin, target)
        result = lookup.result()
        assert len(result) == net.k
        stats.add(lookup, result == net.true_closest(target, exclude=origin))
    with capsys.disabled():
        print(f"\n{size} nodes: {stats}")
    assert stats.exact >= 0.95 * stats.lookups
    assert stats.requests / stats.lookups < 100
    assert stats.rounds / stats.lookups <= 6


def test_down_nodes_are_routed_around() -> None:
    """15 % of the nodes are down but still in everyone's tables. Answers (k peers each) then
    cover only about the k nearest nodes, dead or alive, so the lookup must find every live one
    of those and fill the rest of its k with live peers it heard of."""
    net = SimNetwork(1000, seed=7)
    net.fail(0.15)
    stats = LookupStats()
    dead_among_nearest = 0
    for origin, target in _targets(net, 100):
        if origin in net.down:
            continue
        lookup = net.run(origin, target)
        result = lookup.result()
        # Fewer than k only when so few peers were ever named (k seeds, minus the failed).
        assert len(result) >= net.k - len(lookup.peers(PeerState.UNREACHABLE))
        assert not set(result) & net.down
        nearest = net.true_closest(target, exclude=origin, live=False)
        dead_among_nearest += bool(set(nearest) & net.down)
        stats.add(lookup, set(nearest) - net.down <= set(result))
    assert dead_among_nearest > stats.lookups // 2  # the test does test something
    assert stats.exact >= 0.95 * stats.lookups


def test_down_nodes_that_most_tables_forgot() -> None:
    """After a refresh most tables have dropped the dead: the result is the true k nearest live."""
    net = SimNetwork(1000, seed=8)
    net.fail(0.15, forgotten=0.9)
    stats = LookupStats()
    for origin, target in _targets(net, 100):
        if origin in net.down:
            continue
        lookup = net.run(origin, target)
        stats.add(lookup, lookup.result() == net.true_closest(target, exclude=origin))
    assert any(p in net.down for t in net.tables.values() for p in t.peers())
    assert stats.exact >= 0.95 * stats.lookups


def test_transient_failures_are_routed_around() -> None:
    """10 % of requests fail at random: every one of the k nearest peers that did not fail
    during that lookup is in its result."""
    net = SimNetwork(500, seed=11)
    stats = LookupStats()
    failures = 0
    for origin, target in _targets(net, 100):
        lookup = net.run(origin, target, flaky=0.1)
        failed = set(lookup.peers(PeerState.UNREACHABLE))
        failures += len(failed)
        result = lookup.result()
        assert len(result) >= net.k - len(failed) and not set(result) & failed
        stats.add(lookup, set(net.true_closest(target, exclude=origin)) - failed <= set(result))
    assert failures > 100  # the failures did happen
    assert stats.exact >= 0.95 * stats.lookups


def test_sequential_lookups_converge_too() -> None:
    net = SimNetwork(300, seed=3)
    stats = LookupStats()
    for origin, target in _targets(net, 50):
        lookup = net.run(origin, target, alpha=1, beta=1)
        stats.add(lookup, lookup.result() == net.true_closest(target, exclude=origin))
    assert stats.exact >= 0.95 * stats.lookups
    # One request at a time: each answer leads to at most one new request.
    assert stats.rounds <= stats.requests


def test_a_dead_network_starves_the_lookup() -> None:
    net = SimNetwork(200, seed=5)
    origin = net.peers[0]
    net.down = set(net.peers[1:])
    lookup = net.run(origin, Key(net.rng.randbytes(32)))
    assert lookup.finished and not lookup.stopped and lookup.result() == []
    assert lookup.requests_sent == len(net.tables[origin].nearest(lookup.target, net.k))


def test_empty_answers_end_after_the_seeds() -> None:
    net = SimNetwork(200, seed=6)
    origin = net.peers[0]
    lookup = net.run(origin, Key(net.rng.randbytes(32)), answer=lambda *_: [])
    seeds = net.tables[origin].nearest(lookup.target, net.k)
    assert lookup.result() == seeds and lookup.requests_sent == len(seeds)
    assert lookup.rounds == 1
