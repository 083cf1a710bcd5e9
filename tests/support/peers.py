"""Peer IDs for tests: fast random ones for the keyspace, real keys where a signature counts."""

from __future__ import annotations

import random

from shardroute.identity.keys import Ed25519PrivateKey
from shardroute.identity.peer_id import PeerId

# An Ed25519 identity multihash of 32 random bytes: a well-formed peer ID without making a key.
_ED25519_ID_PREFIX = b"\x00\x24\x08\x01\x12\x20"


def random_peer_id(rng: random.Random | None = None) -> PeerId:
    return PeerId(raw=_ED25519_ID_PREFIX + (rng or random).randbytes(32))


def keyed_peer_id(seed: int | None = None) -> PeerId:
    """The peer ID of a real Ed25519 key (from `seed`, or a new random key)."""
    key = (
        Ed25519PrivateKey.generate()
        if seed is None
        else Ed25519PrivateKey.from_seed(seed.to_bytes(32, "big"))
    )
    return PeerId.from_public_key(key.public_key)
