from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from shardroute.identity.keys import Ed25519PrivateKey
from shardroute.identity.peer_id import PeerId
from shardroute.kad.diversity import DiversityFilter
from shardroute.kad.keyspace import Key, common_prefix_len, random_key_in_bucket
from shardroute.kad.routing_table import Admission, AdmissionResult, RoutingTable, TableEntry

SELF = PeerId(raw=b"\x00\x24\x08\x01\x12\x20" + bytes(32))
SELF_KEY = Key.for_peer(SELF)


def peers_at(cpl: int, count: int, seed: int = 0) -> list[PeerId]:
    """`count` distinct peers whose keys share exactly `cpl` leading bits with SELF's."""
    rng = random.Random(cpl * 1000 + seed)
    return [PeerId(raw=random_key_in_bucket(SELF_KEY, cpl, rng)) for _ in range(count)]


def cpl_of(peer: PeerId) -> int:
    return common_prefix_len(SELF_KEY, Key.for_peer(peer))


def entry_of(table: RoutingTable, peer: PeerId) -> TableEntry:
    entry = table.entry(peer)
    assert entry is not None
    return entry


def brute_nearest(target: Key, peers: list[PeerId], count: int) -> list[PeerId]:
    return sorted(peers, key=lambda p: Key.for_peer(p).value ^ target.value)[:count]


# -- stateful: random operation sequences keep every invariant ---------------------------------

POOL = [p for cpl in range(8) for p in peers_at(cpl, 5)]
GROUPS: list[tuple[str, ...]] = [(), ("g1",), ("g2",), ("g1", "g2"), ("g3",)]
K, CACHE, MAX_FAILURES = 3, 2, 2


class TableMachine(RuleBasedStateMachine):
    diversity = False

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.table = RoutingTable(
            SELF,
            k=K,
            replacement_cache_size=CACHE,
            max_failures=MAX_FAILURES,
            diversity=DiversityFilter() if self.diversity else None,
        )

    def tick(self) -> float:
        self.now += 1.0
        return self.now

    @rule(peer=st.sampled_from([*POOL, SELF]), groups=st.sampled_from(GROUPS), useful=st.booleans())
    def observe(self, peer: PeerId, groups: tuple[str, ...], useful: bool) -> None:
        known = peer in self.table
        now = self.tick()
        result = self.table.observe(peer, now, ip_groups=groups, useful=useful)
        index = self.table.bucket_index(peer)
        if peer == SELF:
            assert result == AdmissionResult(Admission.REJECTED_SELF)
            return
        if known:
            assert result.admission is Admission.UPDATED
            entry = self.table.entry(peer)
            assert entry is not None and entry.last_seen == now and entry.failures == 0
            assert self.table.buckets[index][-1] == peer
            assert (entry.last_useful == now) if useful else True
        elif result.admission is Admission.ADDED:
            assert peer in self.table
            entry = self.table.entry(peer)
            assert entry is not None and entry.ip_groups == groups and entry.added_at == now
        elif result.admission is Admission.FULL:
            assert peer not in self.table
            assert len(self.table.buckets[index]) == K
            assert result.oldest == self.table.buckets[index][0]
            assert self.table.replacements(index)[0] == peer
        else:
            assert result.admission is Admission.REJECTED_DIVERSITY and self.diversity
            assert peer not in self.table
            assert self.table.diversity is not None
            assert not self.table.diversity.allows(cpl_of(peer), groups)

    @rule(peer=st.sampled_from(POOL))
    def confirm_alive(self, peer: PeerId) -> None:
        known = peer in self.table
        now = self.tick()
        self.table.confirm_alive(peer, now)
        assert (peer in self.table) == known
        if known:
            assert self.table.buckets[self.table.bucket_index(peer)][-1] == peer

    @rule(peer=st.sampled_from(POOL))
    def evict(self, peer: PeerId) -> None:
        known = peer in self.table
        waiting = self.table.replacements(self.table.bucket_index(peer))
        backfill = self.table.evict(peer)
        assert peer not in self.table
        if not known:
            assert backfill is None
        elif backfill is not None:
            assert backfill in self.table and backfill in waiting

    @rule(peer=st.sampled_from(POOL))
    def record_failure(self, peer: PeerId) -> None:
        before = self.table.entry(peer)
        self.table.record_failure(peer, self.tick())
        after = self.table.entry(peer)
        if before is None or before.failures + 1 >= MAX_FAILURES:
            assert after is None
        else:
            assert after is not None and after.failures == before.failures + 1

    @rule(peer=st.sampled_from(POOL))
    def remove(self, peer: PeerId) -> None:
        self.table.remove(peer)
        assert peer not in self.table
        assert all(peer not in self.table.replacements(i) for i in range(len(self.table.buckets)))

    @rule(
        digest=st.binary(min_size=32, max_size=32),
        count=st.integers(0, 12),
        exclude=st.sets(st.sampled_from(POOL), max_size=6),
    )
    def nearest(self, digest: bytes, count: int, exclude: set[PeerId]) -> None:
        key = Key(digest)
        candidates = [p for p in self.table.peers() if p not in exclude]
        assert self.table.nearest(key, count, exclude=exclude) == brute_nearest(
            key, candidates, count
        )

    @rule()
    def snapshot_restores_the_same_table(self) -> None:
        restored = RoutingTable.restore(
            SELF,
            self.table.snapshot(),
            k=K,
            replacement_cache_size=CACHE,
            max_failures=MAX_FAILURES,
            diversity=DiversityFilter() if self.diversity else None,
        )
        assert sorted(restored.snapshot(), key=lambda e: e.peer) == sorted(
            self.table.snapshot(), key=lambda e: e.peer
        )

    @invariant()
    def structure(self) -> None:
        buckets = self.table.buckets
        last = len(buckets) - 1
        everyone = [p for b in buckets for p in b]
        assert len(everyone) == len(set(everyone)) == len(self.table) == len(self.table.peers())
        assert SELF not in everyone
        for i, bucket in enumerate(buckets):
            assert len(bucket) <= K
            for peer in bucket:
                assert cpl_of(peer) == i if i < last else cpl_of(peer) >= last
            seen = [e.last_seen for e in map(self.table.entry, bucket) if e is not None]
            assert seen == sorted(seen)  # least recently seen first
            waiting = self.table.replacements(i)
            assert len(waiting) <= CACHE and not set(waiting) & set(everyone)
            assert all(self.table.bucket_index(p) == i for p in waiting)
            assert not waiting or len(bucket) == K  # nobody waits while there is room
        for entry in self.table.snapshot():
            assert entry.failures < MAX_FAILURES
        assert Counter(map(cpl_of, everyone)) == self.table.cpl_counts()

    @invariant()
    def diversity_limits(self) -> None:
        if self.table.diversity is None:
            return
        entries = self.table.snapshot()
        per_table = Counter(g for e in entries for g in e.ip_groups)
        per_bucket = Counter((cpl_of(e.peer), g) for e in entries for g in e.ip_groups)
        assert all(n <= 3 for n in per_table.values())
        assert all(n <= 2 for n in per_bucket.values())
        assert all(e.peer in self.table.diversity for e in entries)
        assert all(self.table.diversity.count(g) == n for g, n in per_table.items())


class TableWithDiversityMachine(TableMachine):
    diversity = True


_STATEFUL = settings(max_examples=150, stateful_step_count=60, deadline=None)
TestTableInvariants = TableMachine.TestCase
TestTableInvariants.settings = _STATEFUL
TestTableWithDiversityInvariants = TableWithDiversityMachine.TestCase
TestTableWithDiversityInvariants.settings = _STATEFUL


# -- explicit behaviour ------------------------------------------------------------------------


def test_self_is_never_admitted() -> None:
    table = RoutingTable(SELF)
    assert table.observe(SELF, 1.0).admission is Admission.REJECTED_SELF
    assert len(table) == 0 and SELF not in table


def test_full_bucket_names_the_least_recently_seen_peer() -> None:
    a, b, c, d = peers_at(0, 4)
    table = RoutingTable(SELF, k=2)
    assert table.observe(a, 1.0).admission is Admission.ADDED
    assert table.observe(b, 2.0).admission is Admission.ADDED
    assert table.observe(a, 3.0).admission is Admission.UPDATED  # a is now the most recent
    assert table.observe(c, 4.0) == AdmissionResult(Admission.FULL, oldest=b)
    assert c not in table and table.replacements(0) == [c]
    # b answered the ping: it stays and becomes most recent; c keeps waiting.
    table.confirm_alive(b, 5.0)
    assert table.buckets[0] == [a, b]
    assert table.observe(d, 6.0) == AdmissionResult(Admission.FULL, oldest=a)
    assert table.replacements(0) == [d, c]


def test_evict_backfills_most_recent_candidate_first() -> None:
    a, b, c, d = peers_at(0, 4)
    table = RoutingTable(SELF, k=2)
    for t, peer in enumerate((a, b, c, d)):
        table.observe(peer, float(t))
    assert table.evict(a) == d
    assert table.buckets[0] == [b, d]
    assert table.evict(b) == c
    # c was last seen before d: the bucket stays in least-recently-seen order.
    assert table.buckets[0] == [c, d]
    assert table.evict(c) is None and table.buckets[0] == [d]
    assert table.evict(a) is None  # no longer there: nothing happens


def test_replacement_cache_is_bounded_and_refreshed() -> None:
    a, b, c, d, e = peers_at(0, 5)
    table = RoutingTable(SELF, k=1, replacement_cache_size=2)
    table.observe(a, 0.0)
    for t, peer in enumerate((b, c, d), start=1):
        table.observe(peer, float(t))
    assert table.replacements(0) == [d, c]  # b fell out
    table.observe(c, 9.0)
    assert table.replacements(0) == [c, d]
    table.observe(e, 10.0)
    assert table.replacements(0) == [e, c]
    assert table.remove(c) is None and table.replacements(0) == [e]


def test_repeated_failures_evict_and_answers_reset_the_count() -> None:
    a, b, c = peers_at(0, 3)
    table = RoutingTable(SELF, k=2, max_failures=3)
    for t, peer in enumerate((a, b, c)):
        table.observe(peer, float(t))
    assert table.record_failure(a, 3.0) is None
    assert table.record_failure(a, 4.0) is None
    table.observe(a, 5.0)  # it answered something: the streak is over
    assert entry_of(table, a).failures == 0
    for now in (6.0, 7.0):
        assert table.record_failure(a, now) is None
    assert table.record_failure(a, 8.0) == c
    assert a not in table and c in table


def test_remove_backfills_and_forgets_waiting_peers() -> None:
    a, b, c = peers_at(2, 3)
    table = RoutingTable(SELF, k=1)
    table.observe(peers_at(0, 1)[0], 0.0)
    table.observe(a, 1.0)
    table.observe(b, 2.0)
    table.observe(c, 3.0)
    index = table.bucket_index(a)
    assert table.replacements(index) == [c, b]
    table.remove(c)
    assert table.remove(a) == b
    assert table.replacements(index) == []


def test_the_last_bucket_splits_when_it_overflows() -> None:
    table = RoutingTable(SELF, k=2)
    zero = peers_at(0, 3)
    deep = peers_at(3, 2)
    table.observe(zero[0], 0.0)
    table.observe(zero[1], 1.0)
    assert len(table.buckets) == 1
    # A cpl-0 newcomer cannot make room by splitting: bucket 0 is simply full.
    assert table.observe(zero[2], 2.0).admission is Admission.FULL
    assert len(table.buckets) == 1
    # A deeper newcomer splits the last bucket off.
    assert table.observe(deep[0], 3.0).admission is Admission.ADDED
    assert table.buckets == [zero[:2], [deep[0]]]
    assert table.bucket_index(deep[1]) == 1
    assert table.observe(deep[1], 4.0).admission is Admission.ADDED
    # Another deep peer: bucket 1 holds only cpl 3 peers, so it splits at 1 and 2 and 3.
    more = peers_at(5, 1) + peers_at(3, 1, seed=1)
    assert table.observe(more[0], 5.0).admission is Admission.ADDED
    assert [len(b) for b in table.buckets] == [2, 0, 0, 2, 1]
    assert table.observe(more[1], 6.0) == AdmissionResult(Admission.FULL, oldest=deep[0])
    assert table.cpl_counts() == Counter({0: 2, 3: 2, 5: 1})


def test_split_makes_room_for_deeper_peers() -> None:
    table = RoutingTable(SELF, k=2)
    zero = peers_at(0, 2)
    ones = peers_at(1, 2)
    table.observe(zero[0], 0.0)
    table.observe(ones[0], 1.0)
    # Bucket 0 is full but holds a cpl-1 peer: splitting moves it out and makes room.
    assert table.observe(ones[1], 2.0).admission is Admission.ADDED
    assert table.buckets == [[zero[0]], [ones[0], ones[1]]]
    assert table.observe(zero[1], 3.0).admission is Admission.ADDED
    assert table.buckets == [[zero[0], zero[1]], [ones[0], ones[1]]]


def test_nearest_crosses_buckets_and_excludes() -> None:
    table = RoutingTable(SELF, k=4)
    everyone = [p for cpl in range(6) for p in peers_at(cpl, 6)]
    for t, peer in enumerate(everyone):
        table.observe(peer, float(t))
    present = table.peers()
    rng = random.Random(3)
    for _ in range(200):
        if rng.random() < 0.5:
            target = Key(rng.randbytes(32))
        else:
            target = Key.for_peer(rng.choice(everyone))
        count = rng.randint(1, 30)
        exclude = set(rng.sample(present, 3))
        expected = brute_nearest(target, [p for p in present if p not in exclude], count)
        assert table.nearest(target, count, exclude=exclude) == expected
    assert table.nearest(SELF_KEY, 0) == []


def test_diversity_caps_in_the_table() -> None:
    table = RoutingTable(SELF, diversity=DiversityFilter())
    g = ("ip4:1.2.0.0/16",)
    a, b, c = peers_at(0, 3)
    d, e = peers_at(1, 2)
    f = peers_at(2, 1)[0]
    assert table.observe(a, 0.0, ip_groups=g).admission is Admission.ADDED
    assert table.observe(b, 1.0, ip_groups=g).admission is Admission.ADDED
    assert table.observe(c, 2.0, ip_groups=g).admission is Admission.REJECTED_DIVERSITY  # 2/bucket
    assert table.observe(c, 2.0, ip_groups=("ip4:1.3.0.0/16",)).admission is Admission.ADDED
    assert table.observe(d, 3.0, ip_groups=g).admission is Admission.ADDED
    assert table.observe(e, 4.0, ip_groups=g).admission is Admission.REJECTED_DIVERSITY  # 3/table
    assert table.observe(f, 5.0, ip_groups=g).admission is Admission.REJECTED_DIVERSITY
    assert table.observe(f, 5.0).admission is Admission.ADDED  # no public address: not limited
    table.remove(a)
    assert table.observe(e, 6.0, ip_groups=g).admission is Admission.ADDED


def test_backfill_skips_candidates_the_filter_now_refuses() -> None:
    table = RoutingTable(SELF, k=1, diversity=DiversityFilter(max_per_table=1))
    a, b, c = peers_at(0, 3)
    table.observe(a, 0.0, ip_groups=("x",))
    assert table.observe(b, 1.0, ip_groups=("z",)).admission is Admission.FULL
    assert table.observe(c, 2.0, ip_groups=("y",)).admission is Admission.FULL
    table.observe(peers_at(1, 1)[0], 3.0, ip_groups=("y",))  # group y is now at its table cap
    assert table.evict(a) == b  # c, the most recent, no longer fits and is dropped
    assert table.replacements(0) == []
    assert table.diversity is not None and table.diversity.count("y") == 1


def test_stale_peers_and_useful() -> None:
    a, b = peers_at(0, 2)
    table = RoutingTable(SELF)
    table.observe(a, 10.0, useful=True)
    table.observe(b, 50.0)
    assert table.stale_peers(100.0, 60.0) == [a]
    assert table.stale_peers(100.0, 30.0) == [a, b]
    assert entry_of(table, a).last_useful == 10.0
    assert entry_of(table, b).last_useful is None
    # entry() hands out a copy.
    entry_of(table, a).failures = 99
    assert entry_of(table, a).failures == 0


def test_restore_keeps_order_and_applies_the_rules() -> None:
    peers = peers_at(0, 4)
    table = RoutingTable(SELF, k=4)
    for t, peer in enumerate(peers):
        table.observe(peer, float(t))
    table.observe(peers[0], 10.0)
    saved = table.snapshot()
    restored = RoutingTable.restore(SELF, saved)
    assert restored.buckets == table.buckets == [[*peers[1:], peers[0]]]
    # Replayed least recently seen first: into a smaller table, the rest wait.
    small = RoutingTable.restore(SELF, [*saved, *saved], k=2)
    assert small.buckets == [[peers[1], peers[2]]]
    assert small.replacements(0) == [peers[0], peers[3]]
    # Ourselves in a snapshot (a changed identity on disk) is skipped.
    mine = RoutingTable.restore(peers[0], saved)
    assert peers[0] not in mine and len(mine) == 3


def test_real_peer_ids() -> None:
    me = PeerId.from_public_key(Ed25519PrivateKey.generate().public_key)
    others = [PeerId.from_public_key(Ed25519PrivateKey.generate().public_key) for _ in range(60)]
    table = RoutingTable(me, k=5)
    for t, peer in enumerate(others):
        table.observe(peer, float(t))
    target = Key.for_peer(others[0])
    assert table.nearest(target, 5) == brute_nearest(target, table.peers(), 5)
    assert table.observe(me, 99.0).admission is Admission.REJECTED_SELF


@pytest.mark.parametrize("kwargs", [{"k": 0}, {"max_failures": 0}, {"replacement_cache_size": -1}])
def test_bad_parameters(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        RoutingTable(SELF, **kwargs)
