from __future__ import annotations

import ast
import pathlib
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shardroute.errors import LocalProtocolError
from shardroute.identity.peer_id import PeerId
from shardroute.kad.keyspace import Key, xor_distance
from shardroute.kad.lookup import Lookup, LookupPhase, PeerState

_RNG = random.Random(5)
SELF = PeerId(raw=b"\x00\x24\x08\x01\x12\x20" + _RNG.randbytes(32))
TARGET = Key(_RNG.randbytes(32))
# 30 peers, nearest to TARGET first.
P = sorted(
    (PeerId(raw=b"\x00\x24\x08\x01\x12\x20" + _RNG.randbytes(32)) for _ in range(30)),
    key=lambda p: xor_distance(Key.for_peer(p), TARGET),
)


def _phase(lookup: Lookup) -> LookupPhase:
    return lookup.phase  # read through a call: mypy would keep an earlier narrowing


def test_seeds_skip_self_and_duplicates_and_the_nearest_go_first() -> None:
    lookup = Lookup(TARGET, [P[5], P[3], SELF, P[3], P[1], P[8]], self_id=SELF, alpha=2)
    assert lookup.peers(PeerState.HEARD) == [P[1], P[3], P[5], P[8]]
    assert lookup.state_of(SELF) is None
    assert lookup.next_queries() == [P[1], P[3]]
    assert lookup.next_queries() == []  # alpha = 2 in flight
    assert lookup.requests_sent == 2 and lookup.rounds == 1
    lookup.on_failure(P[1])
    assert lookup.next_queries() == [P[5]]
    assert lookup.peers(PeerState.WAITING) == [P[3], P[5]]
    assert lookup.peers(PeerState.UNREACHABLE) == [P[1]]


def test_reports_for_peers_not_in_flight_are_misuse() -> None:
    lookup = Lookup(TARGET, [P[0], P[1]], self_id=SELF, alpha=1)
    with pytest.raises(LocalProtocolError):
        lookup.on_reply(P[9], [])  # never heard of
    with pytest.raises(LocalProtocolError):
        lookup.on_reply(P[1], [])  # heard, but never asked
    assert lookup.next_queries() == [P[0]]
    lookup.on_reply(P[0], [])
    with pytest.raises(LocalProtocolError):
        lookup.on_reply(P[0], [])
    with pytest.raises(LocalProtocolError):
        lookup.on_failure(P[0])
    assert lookup.state_of(P[0]) is PeerState.QUERIED


def test_a_stalled_request_frees_its_slot_and_its_late_answer_still_counts() -> None:
    lookup = Lookup(TARGET, P[:6], self_id=SELF, k=3, alpha=2, beta=1)
    assert lookup.next_queries() == [P[0], P[1]]
    assert lookup.next_queries() == []
    lookup.on_stalled(P[0])
    lookup.on_stalled(P[0])  # once is enough; again changes nothing
    assert lookup.next_queries() == [P[2]]  # one slot: P[1] still holds the other
    assert lookup.next_queries() == []
    assert lookup.state_of(P[0]) is PeerState.WAITING
    lookup.on_reply(P[0], [])  # late, but heard: the nearest peer answered
    assert lookup.state_of(P[0]) is PeerState.QUERIED
    assert lookup.next_queries() == []  # its answer frees no second slot
    lookup.on_failure(P[1])
    assert lookup.next_queries() == [P[3]]
    with pytest.raises(LocalProtocolError):
        lookup.on_stalled(P[0])  # answered: nothing in flight to stall
    with pytest.raises(LocalProtocolError):
        lookup.on_stalled(P[5])  # never asked


def test_answers_skip_self_and_known_peers_and_are_cut_at_2k() -> None:
    lookup = Lookup(TARGET, [P[10]], self_id=SELF, k=2)
    assert lookup.next_queries() == [P[10]]
    # Only the first 2k = 4 entries are read; ourselves and P[10] use up two of them.
    lookup.on_reply(P[10], [SELF, P[10], P[1], P[2], P[3], P[4]])
    assert lookup.peers(PeerState.HEARD) == [P[1], P[2]]
    assert lookup.state_of(P[3]) is None and lookup.state_of(SELF) is None


def test_accept_filters_answers_but_never_the_target_peer() -> None:
    target_peer = P[20]
    lookup = Lookup(Key.for_peer(target_peer), [P[0]], self_id=SELF, accept=lambda p: p != P[1])
    lookup.next_queries()
    lookup.on_reply(P[0], [P[1], P[2], target_peer])
    assert lookup.state_of(P[1]) is None
    assert lookup.state_of(P[2]) is lookup.state_of(target_peer) is PeerState.HEARD
    refusing = Lookup(Key.for_peer(target_peer), [P[0]], self_id=SELF, accept=lambda p: False)
    refusing.next_queries()
    refusing.on_reply(P[0], [P[2], target_peer])
    assert refusing.peers(PeerState.HEARD) == [target_peer]


def test_no_seeds_or_only_failures_is_starvation() -> None:
    empty = Lookup(TARGET, [SELF], self_id=SELF)
    assert empty.finished and empty.next_queries() == [] and empty.result() == []
    lookup = Lookup(TARGET, P[:3], self_id=SELF)
    asked = lookup.next_queries()
    for peer in asked[:-1]:
        lookup.on_failure(peer)
        assert not lookup.finished
    lookup.on_failure(asked[-1])
    assert lookup.finished and not lookup.stopped and lookup.result() == []


def test_stop_ends_the_lookup_and_late_answers_add_nothing() -> None:
    lookup = Lookup(TARGET, P[5:8], self_id=SELF)
    asked = lookup.next_queries()
    lookup.on_reply(asked[0], [P[0]])
    lookup.stop()
    assert lookup.finished and lookup.stopped and lookup.phase is LookupPhase.FINISHED
    assert lookup.next_queries() == []
    lookup.on_reply(asked[1], [P[1]])
    assert lookup.state_of(P[1]) is None
    assert lookup.result() == [asked[0], asked[1]]
    lookup.stop()  # again: harmless


def test_beta_convergence_ends_speculation_and_k_closest_end_the_lookup() -> None:
    lookup = Lookup(TARGET, P[:5], self_id=SELF, k=3, alpha=3, beta=1)
    assert lookup.next_queries() == [P[0], P[1], P[2]]
    lookup.on_reply(P[1], [])
    # The nearest peer has not answered yet: still searching, so a free slot goes to P[3] even
    # though it is outside the 3 nearest.
    assert lookup.phase is LookupPhase.SEARCHING
    assert lookup.next_queries() == [P[3]]
    lookup.on_reply(P[0], [])
    # beta = 1 nearest answered: converged. Only the 3 nearest still matter; P[4] is not asked.
    assert _phase(lookup) is LookupPhase.FOLLOW_UP
    assert lookup.next_queries() == []
    assert lookup.state_of(P[4]) is PeerState.HEARD
    lookup.on_reply(P[2], [])
    # The 3 nearest live peers have answered: finished, with P[3] still in flight.
    assert lookup.finished and not lookup.stopped
    assert lookup.result() == [P[0], P[1], P[2]]
    assert lookup.requests_sent == 4


def test_follow_up_asks_new_near_peers_and_replaces_failures() -> None:
    lookup = Lookup(TARGET, [P[2], P[4], P[6], P[8]], self_id=SELF, k=3, alpha=2, beta=1)
    assert lookup.next_queries() == [P[2], P[4]]
    lookup.on_reply(P[2], [])
    assert lookup.phase is LookupPhase.FOLLOW_UP
    assert lookup.next_queries() == [P[6]]
    # A late answer names a nearer peer: it is asked (alpha permitting) even after convergence.
    lookup.on_reply(P[4], [P[0]])
    assert lookup.next_queries() == [P[0]]
    lookup.on_failure(P[0])
    lookup.on_failure(P[6])
    # Failures let P[8] into the 3 nearest live peers.
    assert lookup.next_queries() == [P[8]]
    assert not lookup.finished
    lookup.on_reply(P[8], [])
    assert lookup.finished and lookup.result() == [P[2], P[4], P[8]]


def test_rounds_is_the_longest_referral_chain() -> None:
    lookup = Lookup(TARGET, [P[20], P[21]], self_id=SELF, alpha=10)
    lookup.next_queries()
    lookup.on_reply(P[20], [P[10]])
    assert lookup.next_queries() == [P[10]]
    assert lookup.rounds == 2
    lookup.on_reply(P[21], [P[11]])  # another hop-2 peer: still 2 rounds
    assert lookup.next_queries() == [P[11]]
    assert lookup.rounds == 2
    lookup.on_reply(P[10], [P[0]])
    assert lookup.next_queries() == [P[0]]
    assert lookup.rounds == 3 and lookup.requests_sent == 5


@pytest.mark.parametrize("kwargs", [{"k": 0}, {"alpha": 0}, {"beta": 0}])
def test_bad_parameters(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Lookup(TARGET, P, self_id=SELF, **kwargs)


peer_lists = st.lists(st.sampled_from([*P, SELF]), max_size=12)


@settings(max_examples=300, deadline=None)
@given(
    st.data(),
    st.integers(1, 6),
    st.integers(1, 4),
    st.integers(1, 4),
    peer_lists,
)
def test_any_answers_end_in_a_consistent_result(
    data: st.DataObject, k: int, alpha: int, beta: int, seeds: list[PeerId]
) -> None:
    lookup = Lookup(TARGET, seeds, self_id=SELF, k=k, alpha=alpha, beta=beta)
    in_flight: list[PeerId] = []  # holding an alpha slot
    stalled: list[PeerId] = []  # in flight, slot given up
    answers = 0
    while not lookup.finished:
        asked = lookup.next_queries()
        assert asked == sorted(asked, key=P.index)
        assert all(lookup.state_of(p) is PeerState.WAITING for p in asked)
        in_flight += asked
        assert len(in_flight) <= alpha, "over alpha"
        assert in_flight or stalled, "stuck: nothing in flight, not finished"
        waiting = in_flight + stalled
        peer = waiting[data.draw(st.integers(0, len(waiting) - 1))]
        outcome = data.draw(st.sampled_from(["reply", "reply", "fail", "stop", "stall"]))
        if outcome == "stall":
            if peer in in_flight:
                in_flight.remove(peer)
                stalled.append(peer)
                lookup.on_stalled(peer)
            continue
        (in_flight if peer in in_flight else stalled).remove(peer)
        if outcome == "fail":
            lookup.on_failure(peer)
        else:
            lookup.on_reply(peer, data.draw(peer_lists))
            if outcome == "stop" and data.draw(st.booleans()):
                lookup.stop()
        answers += 1
        assert answers <= len(P), "a peer was asked twice"
    assert lookup.next_queries() == []
    result = lookup.result()
    assert result == sorted(result, key=P.index) and len(result) <= k
    assert all(lookup.state_of(p) is PeerState.QUERIED for p in result)
    asked_ever = [p for p in P if lookup.state_of(p) not in (None, PeerState.HEARD)]
    assert lookup.requests_sent == len(asked_ever)
    if not lookup.stopped:
        # The classic rule: the k nearest peers seen that did not fail have all answered.
        live = [p for p in P if lookup.state_of(p) not in (None, PeerState.UNREACHABLE)]
        assert result == live[:k]


def test_the_kad_core_is_sans_io() -> None:
    """keyspace, diversity, routing_table and lookup import no IO, clock or concurrency."""
    package = pathlib.Path(__file__).parents[2] / "shardroute" / "kad"
    for name in ("keyspace", "diversity", "routing_table", "lookup"):
        tree = ast.parse((package / f"{name}.py").read_text())
        imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        roots = {m.split(".")[0] for m in imported}
        assert not roots & {"anyio", "asyncio", "socket", "time", "trio"}, name
