"""The slice of CBOR (RFC 8949) that IPNS records use: unsigned ints, byte and text strings,
and maps, definite lengths only, with DAG-CBOR's canonical key order when encoding."""

from __future__ import annotations

from typing import Any

MAX_ITEMS = 64


class CborError(ValueError):
    pass


def _head(major: int, value: int) -> bytes:
    if value < 24:
        return bytes([major << 5 | value])
    for info, size in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if value < 1 << (8 * size):
            return bytes([major << 5 | info]) + value.to_bytes(size, "big")
    raise CborError("integer too large")


def encode(item: Any) -> bytes:
    if isinstance(item, bool) or item is None:
        raise CborError(f"unsupported CBOR value {item!r}")
    if isinstance(item, int):
        if item < 0:
            raise CborError("negative integers are not used here")
        return _head(0, item)
    if isinstance(item, bytes):
        return _head(2, len(item)) + item
    if isinstance(item, str):
        data = item.encode()
        return _head(3, len(data)) + data
    if isinstance(item, dict):
        # DAG-CBOR: keys sorted by length, then bytewise.
        keys = sorted(item, key=lambda k: (len(k.encode()), k.encode()))
        return _head(5, len(item)) + b"".join(encode(k) + encode(item[k]) for k in keys)
    raise CborError(f"unsupported CBOR value {type(item).__name__}")


def decode(data: bytes) -> Any:
    value, end = _decode(data, 0, 0)
    if end != len(data):
        raise CborError("trailing bytes after the CBOR item")
    return value


def _decode(data: bytes, pos: int, depth: int) -> tuple[Any, int]:
    if depth > 4:
        raise CborError("CBOR nested too deeply")
    if pos >= len(data):
        raise CborError("truncated CBOR")
    initial = data[pos]
    major, info = initial >> 5, initial & 0x1F
    pos += 1
    if info < 24:
        value = info
    elif info in (24, 25, 26, 27):
        size = 1 << (info - 24)
        if pos + size > len(data):
            raise CborError("truncated CBOR")
        value = int.from_bytes(data[pos : pos + size], "big")
        pos += size
    else:
        raise CborError("indefinite lengths and reserved values are not allowed")
    if major == 0:
        return value, pos
    if major in (2, 3):
        if pos + value > len(data):
            raise CborError("truncated CBOR string")
        raw = data[pos : pos + value]
        pos += value
        if major == 2:
            return bytes(raw), pos
        try:
            return raw.decode(), pos
        except UnicodeDecodeError as exc:
            raise CborError("CBOR text is not UTF-8") from exc
    if major == 5:
        if value > MAX_ITEMS:
            raise CborError("CBOR map too large")
        out: dict[Any, Any] = {}
        for _ in range(value):
            key, pos = _decode(data, pos, depth + 1)
            if not isinstance(key, str) or key in out:
                raise CborError("CBOR map keys must be unique text")
            out[key], pos = _decode(data, pos, depth + 1)
        return out, pos
    raise CborError(f"CBOR major type {major} is not used in IPNS records")
