"""The bookkeeping of kept DHT streams: per-peer caps, idle expiry, streams found unusable,
and peers that break reuse getting fresh streams."""

from __future__ import annotations

import random
from dataclasses import dataclass

from shardroute.kad.stream_pool import KeptStream, StreamPool, new_reader
from tests.support.peers import random_peer_id


@dataclass
class Stream:
    reusable: bool = True
    unread_bytes: int = 0


def kept() -> KeptStream[Stream]:
    return KeptStream(Stream(), new_reader())


def test_at_most_per_peer_kept_and_the_last_used_comes_first() -> None:
    pool: StreamPool[Stream] = StreamPool(per_peer=2, idle=10)
    peer = random_peer_id(random.Random(1))
    a, b, c = kept(), kept(), kept()
    assert pool.give_back(peer, a, 0) and pool.give_back(peer, b, 1)
    assert not pool.give_back(peer, c, 2)  # the caller closes it
    assert pool.take(peer, 3) == (b, [])
    assert pool.take(peer, 3) == (a, [])
    assert pool.take(peer, 3) == (None, []) and len(pool) == 0


def test_idle_or_broken_streams_are_handed_back_for_closing_not_reused() -> None:
    pool: StreamPool[Stream] = StreamPool(per_peer=4, idle=10)
    peer = random_peer_id(random.Random(2))
    old, broken, fresh = kept(), kept(), kept()
    pool.give_back(peer, old, 0)
    pool.give_back(peer, fresh, 9)
    pool.give_back(peer, broken, 9)
    broken.stream.reusable = False  # the peer closed it while it sat here
    assert pool.take(peer, 12) == (fresh, [broken])
    assert pool.take(peer, 12) == (None, [old])  # idle 12 s, past its 10
    assert pool.failures(peer) == 0  # a closed or idle stream is no fault of reuse


def test_bytes_nobody_asked_for_count_against_reuse_and_too_many_end_it() -> None:
    pool: StreamPool[Stream] = StreamPool(per_peer=2, idle=10, max_failures=1)
    peer = random_peer_id(random.Random(3))
    for n in (1, 2):
        echoed = kept()
        pool.give_back(peer, echoed, 0)
        echoed.stream.unread_bytes = 40  # an answer to ADD_PROVIDER arrived meanwhile
        echoed.stream.reusable = False
        assert pool.take(peer, 1) == (None, [echoed])
        assert pool.failures(peer) == n
    assert pool.single_use(peer)
    assert not pool.give_back(peer, kept(), 2)


def test_expiry_sweeps_every_peer_and_failures_are_remembered_for_a_bounded_few() -> None:
    pool: StreamPool[Stream] = StreamPool(per_peer=2, idle=10, remembered=2)
    rng = random.Random(4)
    peers = [random_peer_id(rng) for _ in range(3)]
    for at, peer in enumerate(peers):
        pool.give_back(peer, kept(), at * 5)
    assert len(pool.expired(11)) == 1 and len(pool) == 2  # the one kept at 0
    assert len(pool.expired(30)) == 2 and len(pool) == 0
    for peer in peers:
        pool.failed(peer)
    assert [pool.failures(p) for p in peers] == [0, 1, 1]


def test_the_sweep_counts_an_answer_nobody_asked_for_as_take_does() -> None:
    pool: StreamPool[Stream] = StreamPool(per_peer=2, idle=10)
    peer = random_peer_id(random.Random(5))
    echoed = kept()
    pool.give_back(peer, echoed, 0)
    echoed.stream.unread_bytes, echoed.stream.reusable = 40, False
    assert pool.expired(1) == [echoed] and pool.failures(peer) == 1
