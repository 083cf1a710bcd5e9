from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shardroute.errors import MessageTooLarge, RemoteProtocolError, VarintError
from shardroute.protocol.varint import (
    LengthPrefixedReader,
    decode_uvarint,
    encode_uvarint,
    frame,
    read_uvarint_exact,
)

# connection-stack.md §0
VECTORS = {1: "01", 127: "7f", 128: "8001", 300: "ac02", 16384: "808001"}


@pytest.mark.parametrize(("value", "hexed"), VECTORS.items())
def test_known_encodings(value: int, hexed: str) -> None:
    assert encode_uvarint(value).hex() == hexed
    assert decode_uvarint(bytes.fromhex(hexed)) == (value, len(hexed) // 2)


@given(st.integers(min_value=0, max_value=(1 << 63) - 1))
def test_round_trip(value: int) -> None:
    data = encode_uvarint(value)
    assert len(data) <= 9
    assert decode_uvarint(data + b"\xff") == (value, len(data))


def test_non_minimal_and_overlong_are_rejected() -> None:
    with pytest.raises(VarintError):
        decode_uvarint(b"\x80\x00")
    with pytest.raises(VarintError):
        decode_uvarint(b"\xff" * 10)
    assert decode_uvarint(b"\x80\x80") is None  # a valid prefix: wait for more
    with pytest.raises(VarintError):
        read_uvarint_exact(b"\x80")


def test_negative_and_oversized_values_are_local_errors() -> None:
    with pytest.raises(ValueError):
        encode_uvarint(-1)
    with pytest.raises(ValueError):
        encode_uvarint(1 << 63)


@given(st.lists(st.binary(max_size=300), max_size=20), st.integers(min_value=1, max_value=50))
def test_reader_splits_any_chunking(messages: list[bytes], chunk: int) -> None:
    stream = b"".join(frame(m) for m in messages)
    reader = LengthPrefixedReader(max_message=300)
    out: list[bytes] = []
    for i in range(0, len(stream), chunk):
        reader.receive_data(stream[i : i + chunk])
        while (m := reader.next_message()) is not None:
            out.append(m)
    assert out == messages
    assert reader.buffered == 0


def test_reader_refuses_oversized_before_buffering_the_body() -> None:
    reader = LengthPrefixedReader(max_message=1024)
    reader.receive_data(encode_uvarint(1025))
    with pytest.raises(MessageTooLarge):
        reader.next_message()


def test_reader_keeps_bytes_after_the_last_message() -> None:
    reader = LengthPrefixedReader(max_message=100)
    reader.receive_data(frame(b"abc") + b"\x05tail")
    assert reader.next_message() == b"abc"
    assert reader.next_message() is None
    assert reader.take_remaining() == b"\x05tail"


@given(st.binary(max_size=2000))
def test_garbage_gives_messages_need_data_or_remote_error(data: bytes) -> None:
    reader = LengthPrefixedReader(max_message=512)
    reader.receive_data(data)
    try:
        while reader.next_message() is not None:
            pass
    except RemoteProtocolError:
        pass
