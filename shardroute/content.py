"""CIDs and shard hashes, and the DHT key of a CID, through the multiformats libraries the user
chose: py-cid (and its py-multibase, py-multicodec) and py-multihash.

A shard is named by the SHA-256 of its bytes; as a CID that is CIDv1 raw sha2-256. Provider
records are keyed by the CID's multihash, so v0, v1 and any codec of one digest meet.

Fast paths. py-cid takes about 85 µs to parse a CID and its encoder as long to print one; the
API parses a CID per find and prints one per announced shard. The canonical text of a sha2-256
CIDv1 (lowercase base32, `bafk…`/`bafy…`) is therefore read and written by hand; every other
form goes through the libraries, and a property test (tests/test_content.py) holds the fast
paths to the libraries' answers on every input.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

import base58
import cid as pycid
import multihash
from multicodec.constants import CODE_TABLE, NAME_TABLE

from shardroute.errors import InvalidCid

RAW_CODEC = 0x55
DAG_PB_CODEC = 0x70
SHA2_256 = 0x12
MAX_CID_BYTES = 256
_SHA256_PREFIX = b"\x12\x20"
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
# "b" + the 58 base32 characters of 36 bytes: version, a one-byte codec, a sha2-256 multihash.
_CANONICAL_LEN = 59
_BASE32 = re.compile(r"b[a-z2-7]{58}")


def parse_multihash(data: bytes) -> tuple[int, bytes]:
    """(hash code, digest); the declared length must match the bytes exactly, and a sha2-256
    digest must be whole (no truncated ones: providers of one shard must meet on one key)."""
    try:
        decoded = multihash.decode(bytes(data))
    except (ValueError, TypeError, KeyError) as exc:
        raise InvalidCid(f"malformed multihash: {exc}") from None
    if decoded.code == SHA2_256 and len(decoded.digest) != 32:
        raise InvalidCid(f"sha2-256 digest must be 32 bytes, not {len(decoded.digest)}")
    return int(decoded.code), bytes(decoded.digest)


def _fast_canonical(text: str) -> ContentId | None:
    """The canonical base32 sha2-256 CIDv1, read by hand; None for anything else."""
    if len(text) != _CANONICAL_LEN or not _BASE32.fullmatch(text):
        return None
    try:
        data = base64.b32decode(text[1:].upper() + "======")
    except binascii.Error:
        return None
    if data[0] != 1 or data[1] >= 0x80 or data[2:4] != _SHA256_PREFIX or len(data) != 36:
        return None
    if data[1] not in CODE_TABLE:
        return None
    return ContentId(1, data[1], data[2:])


@dataclass(frozen=True, slots=True)
class ContentId:
    version: int
    codec: int
    multihash: bytes

    @classmethod
    def _from_library(cls, parsed: pycid.CIDv0 | pycid.CIDv1) -> ContentId:
        codec = NAME_TABLE.get(parsed.codec)
        if codec is None:
            raise InvalidCid(f"unknown codec {parsed.codec!r}")
        mh = bytes(parsed.multihash)
        parse_multihash(mh)
        # py-cid reads some short multibase text as a CIDv0 of any multihash; v0 is sha2-256.
        if int(parsed.version) == 0 and not (len(mh) == 34 and mh[:2] == _SHA256_PREFIX):
            raise InvalidCid("a CIDv0 must be a sha2-256 multihash")
        return cls(int(parsed.version), int(codec), mh)

    @classmethod
    def from_bytes(cls, data: bytes) -> ContentId:
        if not data:
            raise InvalidCid("empty CID")
        if len(data) > MAX_CID_BYTES:
            raise InvalidCid(f"CID of {len(data)} bytes is too long")
        # A binary CIDv0 is its bare sha2-256 multihash (cid spec "Decoding"); py-cid reads
        # bytes not starting 0x00/0x01 as base58 text, so it refuses what to_bytes writes.
        if len(data) == 34 and data[:2] == _SHA256_PREFIX:
            return cls(0, DAG_PB_CODEC, bytes(data))
        try:
            parsed = pycid.from_bytes(bytes(data))
        except (ValueError, TypeError, KeyError) as exc:
            raise InvalidCid(f"not a CID: {exc}") from None
        return cls._from_library(parsed)

    @classmethod
    def parse(cls, text: str) -> ContentId:
        text = text.strip()
        if not text:
            raise InvalidCid("empty CID")
        fast = _fast_canonical(text)
        if fast is not None:
            return fast
        if len(text) > 2 * MAX_CID_BYTES:
            raise InvalidCid(f"{text[:32]!r}…: too long for a CID")
        try:
            parsed = pycid.make_cid(text)
        except (ValueError, TypeError, KeyError, binascii.Error) as exc:
            raise InvalidCid(f"{text!r} is not a CID: {str(exc).rstrip('.')}") from None
        return cls._from_library(parsed)

    @classmethod
    def from_shard_hash(cls, digest: bytes) -> ContentId:
        if len(digest) != 32:
            raise InvalidCid(f"a shard hash is 32 bytes of SHA-256, not {len(digest)}")
        return cls(1, RAW_CODEC, _SHA256_PREFIX + digest)

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
        return bytes(self._library().buffer)

    def _library(self) -> pycid.CIDv0 | pycid.CIDv1:
        if self.version == 0:
            return pycid.CIDv0(self.multihash)
        return pycid.CIDv1(CODE_TABLE[self.codec], self.multihash)

    def to_v1(self) -> ContentId:
        return ContentId(1, self.codec, self.multihash)

    def __str__(self) -> str:
        if self.version == 0:
            return str(base58.b58encode(self.multihash).decode())
        if self.codec < 0x80 and self.multihash[:2] == _SHA256_PREFIX and len(self.multihash) == 34:
            data = bytes([1, self.codec]) + self.multihash
            return "b" + base64.b32encode(data).decode().lower().rstrip("=")
        return str(self._library().encode("base32").decode())

    @property
    def dht_key(self) -> bytes:
        return self.multihash

    @property
    def shard_hash(self) -> bytes | None:
        """The 32-byte SHA-256 digest when the multihash is sha2-256, else None."""
        code, digest = parse_multihash(self.multihash)
        return digest if code == SHA2_256 else None
