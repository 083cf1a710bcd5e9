"""Peer IDs (libp2p/specs peer-ids): the multihash of a peer's serialized public key."""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass

import base58

from shardroute.errors import InvalidKey, InvalidPeerId, VarintError
from shardroute.identity.keys import PublicKey
from shardroute.protocol.varint import read_uvarint_exact

IDENTITY_CODE = 0x00
SHA2_256_CODE = 0x12
# Keys whose protobuf is at most this long are inlined (identity multihash), per the spec.
MAX_INLINE_KEY_LENGTH = 42
# The smallest key protobuf there is (Ed25519: 4 header bytes and 32 key bytes); a shorter
# identity multihash names no key, so no peer can ever authenticate as it.
MIN_INLINE_KEY_LENGTH = 36
LIBP2P_KEY_CODEC = 0x72


# The same few thousand peers are printed over and over (API replies, logs); base58 of a
# 38-byte ID is a big-integer loop of ~50 divisions.
@functools.lru_cache(maxsize=4096)
def _base58_of(raw: bytes) -> str:
    return str(base58.b58encode(raw).decode())


@dataclass(frozen=True, slots=True, order=True)
class PeerId:
    raw: bytes

    # Written out: peer IDs key every table and set, and the generated methods build a tuple
    # per call (a few per cent of a lookup's CPU in the profile).
    def __eq__(self, other: object) -> bool:
        return isinstance(other, PeerId) and self.raw == other.raw

    def __hash__(self) -> int:
        return hash(self.raw)

    @classmethod
    def from_bytes(cls, data: bytes) -> PeerId:
        if not data:
            raise InvalidPeerId("empty peer ID")
        try:
            code, pos = read_uvarint_exact(data, 0)
            length, pos = read_uvarint_exact(data, pos)
        except VarintError as exc:
            raise InvalidPeerId(f"malformed peer ID multihash: {exc}") from exc
        if len(data) - pos != length:
            raise InvalidPeerId(
                f"peer ID multihash declares {length} bytes but has {len(data) - pos}"
            )
        if code == IDENTITY_CODE:
            if not MIN_INLINE_KEY_LENGTH <= length <= MAX_INLINE_KEY_LENGTH:
                raise InvalidPeerId(
                    f"identity peer ID of {length} bytes is outside "
                    f"{MIN_INLINE_KEY_LENGTH}..{MAX_INLINE_KEY_LENGTH}"
                )
        elif code == SHA2_256_CODE:
            if length != 32:
                raise InvalidPeerId(f"sha2-256 peer ID must have a 32-byte digest, not {length}")
        else:
            raise InvalidPeerId(
                f"peer ID multihash code {code:#x} is neither identity nor sha2-256"
            )
        return cls(bytes(data))

    @classmethod
    def from_public_key(cls, key: PublicKey) -> PeerId:
        encoded = key.to_protobuf()
        if len(encoded) <= MAX_INLINE_KEY_LENGTH:
            return cls(bytes([IDENTITY_CODE, len(encoded)]) + encoded)
        return cls(bytes([SHA2_256_CODE, 32]) + hashlib.sha256(encoded).digest())

    @classmethod
    def parse(cls, text: str) -> PeerId:
        """base58btc multihash (`12D3Koo…`, `Qm…`) or a CIDv1 with the libp2p-key codec."""
        if not text:
            raise InvalidPeerId("empty peer ID")
        if text.startswith(("1", "Qm")):
            try:
                return cls.from_bytes(base58.b58decode(text))
            except ValueError as exc:
                raise InvalidPeerId(f"invalid peer ID {text!r}: {exc}") from exc
        from shardroute.content import (
            ContentId,
        )  # CIDs build on peer IDs' neighbours, not vice versa

        try:
            cid = ContentId.parse(text)
        except Exception as exc:
            raise InvalidPeerId(f"invalid peer ID {text!r}: {exc}") from exc
        if cid.version != 1 or cid.codec != LIBP2P_KEY_CODEC:
            raise InvalidPeerId(f"{text!r} is a CID but not a libp2p-key CID")
        return cls.from_bytes(cid.multihash)

    def to_base58(self) -> str:
        return _base58_of(self.raw)

    def __str__(self) -> str:
        return self.to_base58()

    def __repr__(self) -> str:
        return f"PeerId({self.to_base58()})"

    def to_cid(self) -> str:
        from shardroute.content import ContentId

        return str(ContentId(version=1, codec=LIBP2P_KEY_CODEC, multihash=self.raw))

    def extract_public_key(self) -> PublicKey | None:
        if self.raw[0] != IDENTITY_CODE:
            return None
        try:
            return PublicKey.from_protobuf(self.raw[2:])
        except InvalidKey:
            return None

    def matches_public_key(self, key: PublicKey) -> bool:
        return PeerId.from_public_key(key) == self
