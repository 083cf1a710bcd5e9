"""Unsigned varints (multiformats unsigned-varint) and uvarint length-prefixed framing."""

from __future__ import annotations

from shardroute.errors import MessageTooLarge, VarintError
from shardroute.limits import VARINT_MAX_BYTES

_MAX_VALUE = (1 << 63) - 1


def encode_uvarint(value: int) -> bytes:
    if value < 0 or value > _MAX_VALUE:
        raise ValueError(f"uvarint out of range: {value}")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def decode_uvarint(data: bytes | bytearray | memoryview, offset: int = 0) -> tuple[int, int] | None:
    """Decode one uvarint at `offset`.

    Returns (value, offset after it), or None when the bytes so far are a valid but incomplete
    prefix. Raises VarintError for over-long or non-minimal encodings.
    """
    value = 0
    shift = 0
    for i in range(VARINT_MAX_BYTES):
        pos = offset + i
        if pos >= len(data):
            return None
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            if byte == 0 and i > 0:
                raise VarintError("non-minimal uvarint encoding")
            return value, pos + 1
        shift += 7
    raise VarintError(f"uvarint longer than {VARINT_MAX_BYTES} bytes")


def read_uvarint_exact(data: bytes, offset: int = 0) -> tuple[int, int]:
    """Like decode_uvarint, but truncation is an error (for whole, self-contained buffers)."""
    decoded = decode_uvarint(data, offset)
    if decoded is None:
        raise VarintError("truncated uvarint")
    return decoded


def frame(body: bytes) -> bytes:
    """uvarint(len(body)) || body."""
    return encode_uvarint(len(body)) + body


class LengthPrefixedReader:
    """Splits a byte stream into uvarint-length-prefixed messages.

    The declared length is checked against `max_message` before any body is buffered, so a
    peer cannot make us allocate more than the limit.
    """

    def __init__(self, max_message: int) -> None:
        self.max_message = max_message
        self._buffer = bytearray()

    def receive_data(self, data: bytes) -> None:
        self._buffer += data

    def next_message(self) -> bytes | None:
        """The next whole message, or None until more bytes arrive."""
        decoded = decode_uvarint(self._buffer)
        if decoded is None:
            return None
        length, start = decoded
        if length > self.max_message:
            raise MessageTooLarge(f"message of {length} bytes exceeds the {self.max_message} limit")
        end = start + length
        if len(self._buffer) < end:
            return None
        message = bytes(self._buffer[start:end])
        del self._buffer[:end]
        return message

    def take_remaining(self) -> bytes:
        """Whatever is buffered after the last whole message (for protocol hand-over)."""
        rest = bytes(self._buffer)
        self._buffer.clear()
        return rest

    @property
    def buffered(self) -> int:
        return len(self._buffer)
