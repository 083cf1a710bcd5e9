"""DAG-CBOR (RFC 8949 with the IPLD DAG-CBOR rules), as much as IPNS records need.

The decoder takes the whole DAG-CBOR data model, because the IPNS spec lets records carry
extra fields in their signed data: integers, byte and text strings, arrays, maps with text
keys, tag 42 (CID links), booleans, null and floats. It refuses what DAG-CBOR forbids or
what we have no use for: indefinite lengths, other tags and simple values, duplicate or
non-text map keys, non-finite floats, trailing bytes, more than MAX_DEPTH levels and more than
MAX_ITEMS items in all. Counts are checked against the bytes left before anything is built.
The encoder writes canonical DAG-CBOR: shortest heads, map keys by length then bytes,
64-bit floats.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Any

# Our choice: a signed IPNS record is ≤ 10 KiB; these leave room for extensions, no more.
MAX_DEPTH = 16
MAX_ITEMS = 1024

_CID_TAG = 42


class CborError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Link:
    """A CID in DAG-CBOR (tag 42); `cid` is the binary CID without the 0x00 multibase byte."""

    cid: bytes


def _head(major: int, value: int) -> bytes:
    if value < 24:
        return bytes([major << 5 | value])
    for info, size in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if value < 1 << (8 * size):
            return bytes([major << 5 | info]) + value.to_bytes(size, "big")
    raise CborError("integer too large for CBOR")


def encode(item: Any) -> bytes:
    if item is None:
        return b"\xf6"
    if isinstance(item, bool):
        return b"\xf5" if item else b"\xf4"
    if isinstance(item, int):
        return _head(0, item) if item >= 0 else _head(1, -1 - item)
    if isinstance(item, float):
        if not math.isfinite(item):
            raise CborError("DAG-CBOR has no NaN or infinities")
        return b"\xfb" + struct.pack(">d", item)
    if isinstance(item, bytes):
        return _head(2, len(item)) + item
    if isinstance(item, str):
        data = item.encode()
        return _head(3, len(data)) + data
    if isinstance(item, list | tuple):
        return _head(4, len(item)) + b"".join(encode(v) for v in item)
    if isinstance(item, dict):
        if not all(isinstance(k, str) for k in item):
            raise CborError("DAG-CBOR map keys must be text")
        keys = sorted(item, key=lambda k: (len(k.encode()), k.encode()))
        return _head(5, len(item)) + b"".join(encode(k) + encode(item[k]) for k in keys)
    if isinstance(item, Link):
        return _head(6, _CID_TAG) + encode(b"\x00" + item.cid)
    raise CborError(f"unsupported CBOR value {type(item).__name__}")


def decode(data: bytes) -> Any:
    """One DAG-CBOR item filling `data` exactly; CborError for anything else."""
    decoder = _Decoder(bytes(data))
    value = decoder.item(0)
    if decoder.pos != len(decoder.data):
        raise CborError("trailing bytes after the CBOR item")
    return value


class _Decoder:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0
        self.items = 0

    def _take(self, size: int) -> bytes:
        if size > len(self.data) - self.pos:
            raise CborError("truncated CBOR")
        chunk = self.data[self.pos : self.pos + size]
        self.pos += size
        return chunk

    def _count(self, n: int, min_bytes_each: int) -> None:
        # Before building anything: every item takes at least one byte.
        if n * min_bytes_each > len(self.data) - self.pos:
            raise CborError("truncated CBOR container")
        self.items += n
        if self.items > MAX_ITEMS:
            raise CborError(f"more than {MAX_ITEMS} CBOR items")

    def item(self, depth: int) -> Any:
        if depth > MAX_DEPTH:
            raise CborError("CBOR nested too deeply")
        initial = self._take(1)[0]
        major, info = initial >> 5, initial & 0x1F
        if major == 7:
            return self._simple(info)
        if info < 24:
            value = info
        elif info <= 27:
            value = int.from_bytes(self._take(1 << (info - 24)), "big")
        else:
            raise CborError("indefinite lengths and reserved values are not allowed")
        if major == 0:
            return value
        if major == 1:
            return -1 - value
        if major == 2:
            return self._take(value)
        if major == 3:
            try:
                return self._take(value).decode()
            except UnicodeDecodeError as exc:
                raise CborError("CBOR text is not UTF-8") from exc
        if major == 4:
            self._count(value, 1)
            return [self.item(depth + 1) for _ in range(value)]
        if major == 5:
            self._count(value, 2)
            out: dict[str, Any] = {}
            for _ in range(value):
                key = self.item(depth + 1)
                if not isinstance(key, str) or key in out:
                    raise CborError("CBOR map keys must be unique text")
                out[key] = self.item(depth + 1)
            return out
        # major 6: a tag. DAG-CBOR has exactly one.
        if value != _CID_TAG:
            raise CborError(f"CBOR tag {value} is not allowed in DAG-CBOR")
        content = self.item(depth + 1)
        if not isinstance(content, bytes) or content[:1] != b"\x00":
            raise CborError("a CID link must be bytes with a 0x00 prefix")
        return Link(content[1:])

    def _simple(self, info: int) -> Any:
        if info == 20:
            return False
        if info == 21:
            return True
        if info == 22:
            return None
        formats = {25: ">e", 26: ">f", 27: ">d"}
        if info not in formats:
            raise CborError(f"CBOR simple value {info} is not allowed in DAG-CBOR")
        fmt = formats[info]
        (value,) = struct.unpack(fmt, self._take(struct.calcsize(fmt)))
        if not math.isfinite(value):
            raise CborError("DAG-CBOR has no NaN or infinities")
        return float(value)
