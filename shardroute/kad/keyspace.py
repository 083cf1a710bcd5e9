"""The Kademlia keyspace: positions, XOR distance, prefixes, ordering (kad-dht.md §2, §9).

A position is SHA-256 of the key's wire bytes: a peer's binary peer ID, a CID's multihash, a
record key. Distance is the XOR of two positions read as a big-endian integer. Pure functions.
"""

from __future__ import annotations

import functools
import hashlib
import heapq
import random
from collections.abc import Iterable
from dataclasses import dataclass, field

from shardroute import limits
from shardroute.identity.peer_id import PeerId

KEY_BITS = 256
KEY_BYTES = KEY_BITS // 8

# A sha2-256 multihash header (code 0x12, length 32): pre-images shaped like a legacy `Qm…` id.
_SHA256_MULTIHASH_PREFIX = b"\x12\x20"


@dataclass(frozen=True, slots=True)
class Key:
    """A position in the keyspace: the 32-byte SHA-256 digest of some key bytes."""

    digest: bytes
    # The digest as a big-endian integer, so that XOR distance is one `^` (cached: hot path).
    value: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.digest) != KEY_BYTES:
            raise ValueError(f"a Kademlia key is {KEY_BYTES} bytes, got {len(self.digest)}")
        object.__setattr__(self, "value", int.from_bytes(self.digest, "big"))

    @classmethod
    def for_bytes(cls, data: bytes) -> Key:
        return cls(hashlib.sha256(data).digest())

    @classmethod
    def for_peer(cls, peer: PeerId) -> Key:
        return _peer_key(peer.raw)

    def __str__(self) -> str:
        return self.digest.hex()


@functools.lru_cache(maxsize=1 << 16)
def _peer_key(raw: bytes) -> Key:
    """A peer's position, hashed once: every lookup places its (up to 4k) seeds and every
    answer's peers, and they are mostly the same peers."""
    return Key(hashlib.sha256(raw).digest())


def xor_distance(a: Key, b: Key) -> int:
    return a.value ^ b.value


def common_prefix_len(a: Key, b: Key) -> int:
    """Leading bits the two keys share, 0…256 (256 only for equal keys)."""
    return KEY_BITS - (a.value ^ b.value).bit_length()


def sort_by_distance(target: Key, peers: Iterable[PeerId]) -> list[PeerId]:
    t = target.value
    return sorted(peers, key=lambda p: Key.for_peer(p).value ^ t)


def closest(target: Key, peers: Iterable[PeerId], count: int) -> list[PeerId]:
    """The `count` peers nearest to `target`, nearest first; O(n log count)."""
    t = target.value
    return heapq.nsmallest(count, peers, key=lambda p: Key.for_peer(p).value ^ t)


# Deepest prefix `random_key_with_prefix` will match: 2^20 expected hashes (~0.5 s) at worst.
MAX_PREFIX_BITS = 20


def prefix_of(key: Key, depth: int) -> int:
    """The top `depth` bits of `key` as an integer."""
    return key.value >> (KEY_BITS - depth)


def random_key_with_prefix(prefix: int, depth: int, rng: random.Random) -> bytes:
    """A peer-ID-shaped pre-image (`12 20` + 32 random bytes) whose Key starts with the `depth`
    bits of `prefix`.

    The wire carries pre-images, so a lookup aimed at a region of the keyspace needs bytes whose
    hash falls in it: each try hits with probability 2^-depth. Raises ValueError past
    `MAX_PREFIX_BITS`.
    """
    if not 0 <= depth <= MAX_PREFIX_BITS:
        raise ValueError(f"depth must be within 0…{MAX_PREFIX_BITS}, got {depth}")
    if not 0 <= prefix < 1 << depth:
        raise ValueError(f"prefix {prefix} does not fit in {depth} bits")
    shift = KEY_BITS - depth
    while True:
        candidate = _SHA256_MULTIHASH_PREFIX + rng.getrandbits(KEY_BITS).to_bytes(KEY_BYTES, "big")
        if int.from_bytes(hashlib.sha256(candidate).digest(), "big") >> shift == prefix:
            return candidate


def random_key_in_bucket(self_key: Key, cpl: int, rng: random.Random) -> bytes:
    """A pre-image whose Key has exactly `cpl` leading bits in common with ours (a refresh
    lookup for bucket `cpl`, kad-dht.md §9). `cpl` is capped at `limits.KAD_REFRESH_MAX_CPL`
    (15, as go): at most ~65 536 expected hashes. Raises ValueError beyond that.
    """
    if not 0 <= cpl <= limits.KAD_REFRESH_MAX_CPL:
        raise ValueError(f"cpl must be within 0…{limits.KAD_REFRESH_MAX_CPL}, got {cpl}")
    return random_key_with_prefix(prefix_of(self_key, cpl + 1) ^ 1, cpl + 1, rng)
