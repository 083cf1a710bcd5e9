"""CIDs and shard hashes, and the DHT key of a CID (multiformats cid, multibase, multihash).

A shard is named by the SHA-256 of its bytes; as a CID that is CIDv1 raw sha2-256. Provider
records are keyed by the CID's multihash, so v0, v1 and any codec of one digest meet.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable
from dataclasses import dataclass

from shardroute.errors import InvalidCid, VarintError
from shardroute.identity.base58 import b58decode, b58encode
from shardroute.protocol.varint import encode_uvarint, read_uvarint_exact

RAW_CODEC = 0x55
DAG_PB_CODEC = 0x70
SHA2_256 = 0x12
MAX_CID_BYTES = 256
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
_B36 = "0123456789abcdefghijklmnopqrstuvwxyz"


def _b32decode(text: str) -> bytes:
    padded = text.upper() + "=" * (-len(text) % 8)
    return base64.b32decode(padded)


def _b36decode(text: str) -> bytes:
    text = text.lower()
    n = 0
    for char in text:
        digit = _B36.find(char)
        if digit < 0:
            raise ValueError(f"invalid base36 character {char!r}")
        n = n * 36 + digit
    zeros = len(text) - len(text.lstrip("0"))
    return b"\x00" * zeros + (n.to_bytes((n.bit_length() + 7) // 8, "big") if n else b"")


def _b64decode(text: str, alphabet: bytes | None) -> bytes:
    padded = text + "=" * (-len(text) % 4)
    return base64.b64decode(padded, altchars=alphabet, validate=True)


_MULTIBASE: dict[str, Callable[[str], bytes]] = {
    "b": lambda t: _b32decode(t) if t == t.lower() else _fail("base32 must be lowercase"),
    "B": lambda t: _b32decode(t) if t == t.upper() else _fail("base32upper must be uppercase"),
    "z": b58decode,
    "k": lambda t: _b36decode(t) if t == t.lower() else _fail("base36 must be lowercase"),
    "K": lambda t: _b36decode(t) if t == t.upper() else _fail("base36upper must be uppercase"),
    "f": lambda t: bytes.fromhex(t) if t == t.lower() else _fail("base16 must be lowercase"),
    "F": lambda t: bytes.fromhex(t) if t == t.upper() else _fail("base16upper must be uppercase"),
    "m": lambda t: _b64decode(t, None),
    "u": lambda t: _b64decode(t, b"-_"),
}


def _fail(message: str) -> bytes:
    raise ValueError(message)


def parse_multihash(data: bytes) -> tuple[int, bytes]:
    """(hash code, digest); the declared length must match the bytes exactly."""
    try:
        code, pos = read_uvarint_exact(data, 0)
        length, pos = read_uvarint_exact(data, pos)
    except VarintError as exc:
        raise InvalidCid(f"malformed multihash: {exc}") from exc
    if len(data) - pos != length:
        raise InvalidCid(f"multihash declares a {length}-byte digest but carries {len(data) - pos}")
    if code == SHA2_256 and length != 32:
        raise InvalidCid(f"sha2-256 digest must be 32 bytes, not {length}")
    return code, data[pos:]


@dataclass(frozen=True, slots=True)
class ContentId:
    version: int
    codec: int
    multihash: bytes

    @classmethod
    def from_bytes(cls, data: bytes) -> ContentId:
        if not data:
            raise InvalidCid("empty CID")
        if len(data) > MAX_CID_BYTES:
            raise InvalidCid(f"CID of {len(data)} bytes is too long")
        if len(data) == 34 and data[:2] == b"\x12\x20":
            return cls(0, DAG_PB_CODEC, bytes(data))
        try:
            version, pos = read_uvarint_exact(data, 0)
            if version != 1:
                raise InvalidCid(f"unsupported CID version {version}")
            codec, pos = read_uvarint_exact(data, pos)
        except VarintError as exc:
            raise InvalidCid(f"malformed CID: {exc}") from exc
        multihash = bytes(data[pos:])
        parse_multihash(multihash)
        return cls(1, codec, multihash)

    @classmethod
    def parse(cls, text: str) -> ContentId:
        text = text.strip()
        if not text:
            raise InvalidCid("empty CID")
        if len(text) == 46 and text.startswith("Qm"):
            try:
                return cls.from_bytes(b58decode(text))
            except ValueError as exc:
                raise InvalidCid(f"invalid CIDv0 {text!r}: {exc}") from exc
        decoder = _MULTIBASE.get(text[0])
        if decoder is None:
            raise InvalidCid(f"{text!r} is not a CID: unknown multibase prefix {text[0]!r}")
        try:
            data = decoder(text[1:])
        except (ValueError, binascii.Error) as exc:
            raise InvalidCid(f"{text!r} is not a CID: {exc}") from exc
        if data[:1] == b"\x12":
            raise InvalidCid(f"{text!r}: a CIDv0 cannot be multibase-encoded")
        return cls.from_bytes(data)

    @classmethod
    def from_shard_hash(cls, digest: bytes) -> ContentId:
        if len(digest) != 32:
            raise InvalidCid(f"a shard hash is 32 bytes of SHA-256, not {len(digest)}")
        return cls(1, RAW_CODEC, b"\x12\x20" + digest)

    @classmethod
    def parse_cid_or_hash(cls, text: str) -> ContentId:
        """A CID in any form, or 64 hex characters naming a shard by its raw SHA-256."""
        text = text.strip()
        if _HEX64.fullmatch(text):
            return cls.from_shard_hash(bytes.fromhex(text))
        return cls.parse(text)

    def to_bytes(self) -> bytes:
        if self.version == 0:
            return self.multihash
        return encode_uvarint(1) + encode_uvarint(self.codec) + self.multihash

    def to_v1(self) -> ContentId:
        return ContentId(1, self.codec, self.multihash)

    def __str__(self) -> str:
        if self.version == 0:
            return b58encode(self.multihash)
        return "b" + base64.b32encode(self.to_bytes()).decode().lower().rstrip("=")

    @property
    def dht_key(self) -> bytes:
        return self.multihash

    @property
    def shard_hash(self) -> bytes | None:
        """The 32-byte SHA-256 digest when the multihash is sha2-256, else None."""
        code, digest = parse_multihash(self.multihash)
        return digest if code == SHA2_256 else None
