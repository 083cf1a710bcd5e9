"""Valid records for the value tests: /pk/ of an RSA (hashed-key) peer, /ipns/ of Ed25519."""

from __future__ import annotations

from functools import cache

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from shardroute.identity.keys import Ed25519PrivateKey, RsaPublicKey
from shardroute.kad import records

# Far in the FakeClock's future (it starts at 1.8e9 wall seconds).
IPNS_EXPIRY = 2_100_000_000.0


def pk_record() -> tuple[bytes, bytes]:
    """(`/pk/<sha2-256 peer id>`, public key protobuf): /pk/ is for hashed-key peers."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    der = private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return records.pk_record(RsaPublicKey(der))


@cache
def _ipns_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_seed(bytes(range(32)))


def ipns_record(*, sequence: int) -> tuple[bytes, bytes]:
    """A signed IPNS record of one fixed name; higher `sequence` wins `select`."""
    return records.build_ipns_record(
        _ipns_key(), b"/ipfs/bafkqaaa", sequence=sequence, expires_at=IPNS_EXPIRY
    )
