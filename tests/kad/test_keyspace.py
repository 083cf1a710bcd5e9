from __future__ import annotations

import hashlib
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shardroute.identity.peer_id import PeerId
from shardroute.kad.keyspace import (
    Key,
    closest,
    common_prefix_len,
    random_key_in_bucket,
    sort_by_distance,
    xor_distance,
)

keys = st.binary(min_size=32, max_size=32).map(Key)
peers = st.binary(min_size=32, max_size=32).map(
    lambda b: PeerId(raw=b"\x00\x24\x08\x01\x12\x20" + b)
)


def _bits(key: Key) -> str:
    return "".join(f"{byte:08b}" for byte in key.digest)


# kad-dht.md §2, ipfs/specs worked example: 12D3KooWLU2znyJMtDiHArqAGbZn8CgUGp92kxDBtefftEEaHSZS.
PEER_BYTES = "0024080112209e3b433cbd31c2b8a6ebbdca998bd0f4c2141c9c9af5422e976051b1e63af14d"
PEER_KAD_ID = "e43d28f0996557c0d5571d75c62a57a59d7ac1d30a51ecedcdb9d5e4afa56100"


def test_worked_kad_id_vector() -> None:
    peer = PeerId.parse("12D3KooWLU2znyJMtDiHArqAGbZn8CgUGp92kxDBtefftEEaHSZS")
    assert peer.raw.hex() == PEER_BYTES
    assert Key.for_peer(peer).digest.hex() == PEER_KAD_ID
    assert Key.for_bytes(bytes.fromhex(PEER_BYTES)) == Key.for_peer(peer)
    assert str(Key.for_peer(peer)) == PEER_KAD_ID


def test_key_hashes_the_bytes_as_given() -> None:
    assert Key.for_bytes(b"").digest.hex() == (
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )
    # A provider key is the multihash, not its hex or a CID around it (kad-dht.md §11.3).
    multihash = bytes.fromhex("1220") + bytes(32)
    assert Key.for_bytes(multihash) != Key.for_bytes(b"\x01\x55" + multihash)


@pytest.mark.parametrize("size", [0, 31, 33])
def test_key_must_be_32_bytes(size: int) -> None:
    with pytest.raises(ValueError):
        Key(bytes(size))


@given(keys, keys)
def test_distance_is_the_xor_of_the_big_endian_bytes(a: Key, b: Key) -> None:
    xored = bytes(x ^ y for x, y in zip(a.digest, b.digest, strict=True))
    assert xor_distance(a, b) == int.from_bytes(xored, "big")


@given(keys, keys, keys)
def test_xor_metric_laws(a: Key, b: Key, c: Key) -> None:
    assert xor_distance(a, a) == 0
    assert xor_distance(a, b) == xor_distance(b, a)
    assert (xor_distance(a, b) == 0) == (a == b)
    # Unidirectionality: from a, each distance is reached by exactly one key.
    assert (xor_distance(a, b) == xor_distance(a, c)) == (b == c)
    # Triangle inequality, and its exact XOR form.
    assert xor_distance(a, c) <= xor_distance(a, b) + xor_distance(b, c)
    assert xor_distance(a, c) == xor_distance(a, b) ^ xor_distance(b, c)


@given(keys, keys)
def test_cpl_counts_the_shared_leading_bits(a: Key, b: Key) -> None:
    bits_a, bits_b = _bits(a), _bits(b)
    shared = next((i for i in range(256) if bits_a[i] != bits_b[i]), 256)
    assert common_prefix_len(a, b) == shared


@given(keys, st.integers(min_value=0, max_value=255))
def test_cpl_of_a_key_with_one_flipped_bit(a: Key, bit: int) -> None:
    flipped = (a.value ^ (1 << (255 - bit))).to_bytes(32, "big")
    assert common_prefix_len(a, Key(flipped)) == bit
    assert common_prefix_len(a, a) == 256


@given(keys, keys, keys)
def test_larger_cpl_means_strictly_closer(t: Key, a: Key, b: Key) -> None:
    if common_prefix_len(t, a) > common_prefix_len(t, b):
        assert xor_distance(t, a) < xor_distance(t, b)


def _brute_force(target: Key, items: list[PeerId]) -> list[PeerId]:
    # Compare the XOR byte strings lexicographically (kad-dht.md §2), independently of the module.
    def xor_bytes(p: PeerId) -> bytes:
        digest = hashlib.sha256(p.raw).digest()
        return bytes(x ^ y for x, y in zip(digest, target.digest, strict=True))

    return sorted(items, key=xor_bytes)


@given(keys, st.lists(peers, unique=True, max_size=40), st.integers(min_value=0, max_value=50))
def test_sort_and_closest_agree_with_brute_force(
    target: Key, items: list[PeerId], count: int
) -> None:
    expected = _brute_force(target, items)
    assert sort_by_distance(target, items) == expected
    assert closest(target, iter(items), count) == expected[:count]


@pytest.mark.parametrize("cpl", range(16))
def test_random_key_in_bucket_hits_the_cpl(cpl: int) -> None:
    rng = random.Random(cpl)
    self_key = Key.for_bytes(b"self %d" % cpl)
    preimage = random_key_in_bucket(self_key, cpl, rng)
    assert len(preimage) == 34 and preimage[:2] == b"\x12\x20"  # a sha2-256 multihash shape
    assert common_prefix_len(Key.for_bytes(preimage), self_key) == cpl
    # A second draw is a different key in the same bucket.
    again = random_key_in_bucket(self_key, cpl, rng)
    assert again != preimage
    assert common_prefix_len(Key.for_bytes(again), self_key) == cpl


@pytest.mark.parametrize("cpl", [-1, 16, 255])
def test_random_key_in_bucket_refuses_unbounded_work(cpl: int) -> None:
    with pytest.raises(ValueError):
        random_key_in_bucket(Key.for_bytes(b"x"), cpl, random.Random(0))
