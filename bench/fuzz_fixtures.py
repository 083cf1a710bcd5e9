"""What every fuzz harness shares: the input layout (bench/fuzz_targets.py), the check that
counts as a crash, and fixed identities."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from shardroute.identity.keys import Ed25519PrivateKey, KeyType, _encode_key_pb
from shardroute.identity.peer_id import PeerId


def _layout(data: bytes) -> tuple[int, int, bytes]:
    """(mode, chunk size, body) of an input; short inputs read as zeros."""
    mode = data[0] if data else 0
    chunk = data[1] if len(data) > 1 else 0
    return mode, chunk, data[2:]


def _seed(mode: int, chunk: int, body: bytes) -> bytes:
    return bytes([mode, chunk]) + body


def _chunks(body: bytes, size: int) -> Iterator[bytes]:
    if size == 0:
        yield body
        return
    for start in range(0, len(body), size):
        yield body[start : start + size]


def _fail(what: str) -> None:
    raise AssertionError(what)


# Fixed keys: key generation per input would dominate the cost, and crashes must replay.
ID_I = Ed25519PrivateKey.from_seed(bytes([0x21]) * 32)
ID_R = Ed25519PrivateKey.from_seed(bytes([0x22]) * 32)
PEER_I = PeerId.from_public_key(ID_I.public_key)
PEER_R = PeerId.from_public_key(ID_R.public_key)
NOW = 1_800_000_000.0


def _other_identities() -> list[tuple[bytes, Callable[[bytes], bytes]]]:
    """Public-key protobufs and signers for RSA, secp256k1 and ECDSA (seeds only)."""
    der = serialization.Encoding.DER
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    k1 = ec.generate_private_key(ec.SECP256K1())
    p256 = ec.generate_private_key(ec.SECP256R1())
    k1_point = k1.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint
    )
    return [
        (
            _encode_key_pb(KeyType.RSA, rsa_key.public_key().public_bytes(der, spki)),
            lambda m: rsa_key.sign(m, padding.PKCS1v15(), hashes.SHA256()),
        ),
        (
            _encode_key_pb(KeyType.Secp256k1, k1_point),
            lambda m: k1.sign(m, ec.ECDSA(hashes.SHA256())),
        ),
        (
            _encode_key_pb(KeyType.ECDSA, p256.public_key().public_bytes(der, spki)),
            lambda m: p256.sign(m, ec.ECDSA(hashes.SHA256())),
        ),
    ]
