"""The region map answers the exact k closest peers from a few lookups (ideal lookups here)."""

from __future__ import annotations

import hashlib
import random

import pytest

from shardroute.identity.keys import Ed25519PrivateKey
from shardroute.identity.peer_id import PeerId
from shardroute.kad.keyspace import Key, closest
from shardroute.kad.messages import PeerInfo
from shardroute.kad.regions import RegionMap


def peers(n: int) -> list[PeerId]:
    return [PeerId.from_public_key(Ed25519PrivateKey.generate().public_key) for _ in range(n)]


def cover(network: list[PeerId], keys: list[Key], k: int, rng: random.Random) -> RegionMap:
    regions = RegionMap(k, rng=rng)
    for key in sorted(keys, key=lambda x: x.value):
        for _ in range(64):
            found = regions.closest(key)
            if found is not None:
                break
            target = Key.for_bytes(regions.next_target(key))
            regions.add_lookup(target, [PeerInfo(p, ()) for p in closest(target, network, k)])
        else:
            pytest.fail("the region map did not converge")
        assert [i.peer_id for i in found] == closest(key, network, k)
    return regions


@pytest.mark.parametrize("size", [5, 20, 60, 400])
def test_exact_closest_peers_with_few_lookups(size: int) -> None:
    rng = random.Random(size)
    network = peers(size)
    keys = [Key(hashlib.sha256(rng.randbytes(8)).digest()) for _ in range(3000)]
    regions = cover(network, keys, 20, rng)
    # A region of k..2k peers costs a few lookups; there are about size / (1.5 k) of them.
    assert regions.lookups <= max(2, 4 * size // 20), regions.lookups


@pytest.mark.parametrize("how", ["timed_out", "unreachable"])
def test_a_short_lookup_that_lost_peers_proves_nothing(how: str) -> None:
    """Fewer than k answers from a lookup that timed out or had peers fail is not the whole
    network: the map must keep asking, not answer with the few peers it knows."""
    rng = random.Random(7)
    network = peers(100)
    regions = RegionMap(20, rng=rng)
    target = Key(hashlib.sha256(b"under load").digest())
    few = [PeerInfo(p, ()) for p in closest(target, network, 20)[:6]]
    if how == "timed_out":
        regions.add_lookup(target, few, timed_out=True)
    else:
        regions.add_lookup(target, few, unreachable=3)
    for _ in range(50):
        key = Key(hashlib.sha256(rng.randbytes(8)).digest())
        assert regions.closest(key) is None
    # The same answers from a lookup that ran out of peers with none failing: all there is.
    regions.add_lookup(target, few)
    assert regions.closest(target) == few
