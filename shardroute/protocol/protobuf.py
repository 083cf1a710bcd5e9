"""Decoding a peer's protobuf bytes, every failure as the caller's protocol error."""

from __future__ import annotations

from typing import TypeVar

from google.protobuf.message import DecodeError, Message

M = TypeVar("M", bound=Message)


def parse_message(message: type[M], data: bytes, error: type[Exception], what: str) -> M:
    """`data` as a `message`, or `error("undecodable <what>: …")`. python-protobuf raises
    DecodeError on bad wire bytes, ValueError on invalid UTF-8 in a proto3 string and
    RuntimeError past its recursion limit."""
    parsed = message()
    try:
        parsed.ParseFromString(data)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise error(f"undecodable {what}: {exc}") from exc
    return parsed
