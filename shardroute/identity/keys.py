"""libp2p keys: our Ed25519 identity, and peers' public keys of the four libp2p types.

A public key travels as the libp2p PublicKey protobuf, `08 <type> 12 <len> <data>`. Those bytes
are hashed into peer IDs, so we write them by hand: a generic encoder may drop `Type = 0`.
"""

from __future__ import annotations

import abc
import enum

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from shardroute.errors import InvalidKey, VarintError
from shardroute.protocol.varint import encode_uvarint, read_uvarint_exact

# go-libp2p refuses RSA keys outside these sizes (core/crypto/rsa_common.go).
RSA_MIN_BITS = 2048
RSA_MAX_BITS = 8192
MAX_KEY_PROTOBUF = 2048


class KeyType(enum.IntEnum):
    RSA = 0
    Ed25519 = 1
    Secp256k1 = 2
    ECDSA = 3


def _encode_key_pb(key_type: KeyType, data: bytes) -> bytes:
    return b"\x08" + encode_uvarint(int(key_type)) + b"\x12" + encode_uvarint(len(data)) + data


def _decode_key_pb(blob: bytes) -> tuple[int, bytes]:
    """Parse `{Type = 1; Data = 2}` leniently in field order, rejecting anything malformed."""
    if len(blob) > MAX_KEY_PROTOBUF:
        raise InvalidKey(f"key protobuf of {len(blob)} bytes is too large")
    key_type: int | None = None
    data: bytes | None = None
    pos = 0
    try:
        while pos < len(blob):
            tag, pos = read_uvarint_exact(blob, pos)
            field, wire = tag >> 3, tag & 7
            if wire == 0:
                value, pos = read_uvarint_exact(blob, pos)
                if field == 1:
                    key_type = value
            elif wire == 2:
                length, pos = read_uvarint_exact(blob, pos)
                if pos + length > len(blob):
                    raise InvalidKey("truncated key protobuf")
                chunk = blob[pos : pos + length]
                pos += length
                if field == 2:
                    data = chunk
            else:
                raise InvalidKey(f"unexpected wire type {wire} in key protobuf")
    except VarintError as exc:
        raise InvalidKey(f"malformed key protobuf: {exc}") from exc
    if key_type is None or data is None:
        raise InvalidKey("key protobuf lacks its type or data")
    return key_type, data


class PublicKey(abc.ABC):
    key_type: KeyType

    def __init__(self, data: bytes) -> None:
        self.data = data

    def to_protobuf(self) -> bytes:
        return _encode_key_pb(self.key_type, self.data)

    @abc.abstractmethod
    def verify(self, message: bytes, signature: bytes) -> bool: ...

    @staticmethod
    def from_protobuf(data: bytes) -> PublicKey:
        key_type, raw = _decode_key_pb(data)
        cls = _PUBLIC_TYPES.get(key_type)
        if cls is None:
            raise InvalidKey(f"unsupported key type {key_type}")
        return cls(raw)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PublicKey) and (self.key_type, self.data) == (
            other.key_type,
            other.data,
        )

    def __hash__(self) -> int:
        return hash((self.key_type, self.data))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.data.hex()[:16]}…)"


class Ed25519PublicKey(PublicKey):
    key_type = KeyType.Ed25519

    def __init__(self, data: bytes) -> None:
        if len(data) != 32:
            raise InvalidKey(f"Ed25519 public key must be 32 bytes, not {len(data)}")
        super().__init__(data)
        self._key = ed25519.Ed25519PublicKey.from_public_bytes(data)

    def verify(self, message: bytes, signature: bytes) -> bool:
        try:
            self._key.verify(signature, message)
        except InvalidSignature:
            return False
        return True


class RsaPublicKey(PublicKey):
    key_type = KeyType.RSA

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        try:
            key = serialization.load_der_public_key(data)
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise InvalidKey(f"unparseable RSA public key: {exc}") from exc
        if not isinstance(key, rsa.RSAPublicKey):
            raise InvalidKey("RSA key type with a non-RSA key")
        if not RSA_MIN_BITS <= key.key_size <= RSA_MAX_BITS:
            raise InvalidKey(
                f"RSA key of {key.key_size} bits is outside {RSA_MIN_BITS}..{RSA_MAX_BITS}"
            )
        self._key = key

    def verify(self, message: bytes, signature: bytes) -> bool:
        try:
            self._key.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature:
            return False
        return True


class _EcPublicKey(PublicKey):
    _key: ec.EllipticCurvePublicKey

    def verify(self, message: bytes, signature: bytes) -> bool:
        try:
            self._key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
        except (InvalidSignature, ValueError):
            return False
        return True


class Secp256k1PublicKey(_EcPublicKey):
    key_type = KeyType.Secp256k1

    def __init__(self, data: bytes) -> None:
        if len(data) not in (33, 65):
            raise InvalidKey(f"secp256k1 public key must be 33 or 65 bytes, not {len(data)}")
        super().__init__(data)
        try:
            self._key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256K1(), data)
        except ValueError as exc:
            raise InvalidKey(f"invalid secp256k1 point: {exc}") from exc


class EcdsaPublicKey(_EcPublicKey):
    key_type = KeyType.ECDSA

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        try:
            key = serialization.load_der_public_key(data)
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise InvalidKey(f"unparseable ECDSA public key: {exc}") from exc
        if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(
            key.curve, (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)
        ):
            raise InvalidKey("ECDSA key must be on P-256, P-384 or P-521")
        self._key = key


_PUBLIC_TYPES: dict[int, type[PublicKey]] = {
    KeyType.RSA: RsaPublicKey,
    KeyType.Ed25519: Ed25519PublicKey,
    KeyType.Secp256k1: Secp256k1PublicKey,
    KeyType.ECDSA: EcdsaPublicKey,
}


class Ed25519PrivateKey:
    """Our identity key. We only ever sign with Ed25519."""

    def __init__(self, key: ed25519.Ed25519PrivateKey) -> None:
        self._key = key
        raw = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self._public = Ed25519PublicKey(raw)

    @classmethod
    def generate(cls) -> Ed25519PrivateKey:
        return cls(ed25519.Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> Ed25519PrivateKey:
        if len(seed) != 32:
            raise InvalidKey(f"Ed25519 seed must be 32 bytes, not {len(seed)}")
        return cls(ed25519.Ed25519PrivateKey.from_private_bytes(seed))

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self._public

    def seed(self) -> bytes:
        return self._key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)

    def to_protobuf(self) -> bytes:
        """libp2p PrivateKey protobuf; Data = seed ‖ public key (64 bytes, as go writes it)."""
        return _encode_key_pb(KeyType.Ed25519, self.seed() + self._public.data)

    @classmethod
    def from_protobuf(cls, data: bytes) -> Ed25519PrivateKey:
        key_type, raw = _decode_key_pb(data)
        if key_type != KeyType.Ed25519:
            raise InvalidKey(f"identity key must be Ed25519, found type {key_type}")
        if len(raw) == 96 and raw[32:64] == raw[64:96]:
            raw = raw[:64]  # legacy go format: seed ‖ pub ‖ pub
        if len(raw) != 64:
            raise InvalidKey(f"Ed25519 private key data must be 64 bytes, not {len(raw)}")
        key = cls.from_seed(raw[:32])
        if key.public_key.data != raw[32:]:
            raise InvalidKey("Ed25519 private key: stored public half does not match the seed")
        return key
