"""Yamux frame headers (hashicorp yamux spec.md): 12 bytes, big-endian."""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from shardroute.errors import YamuxError
from shardroute.limits import YAMUX_HEADER_LEN

VERSION = 0
_HEADER = struct.Struct(">BBHII")


class FrameType(enum.IntEnum):
    DATA = 0
    WINDOW_UPDATE = 1
    PING = 2
    GO_AWAY = 3


class Flag(enum.IntFlag):
    NONE = 0
    SYN = 0x1
    ACK = 0x2
    FIN = 0x4
    RST = 0x8


class GoAwayCode(enum.IntEnum):
    NORMAL = 0
    PROTOCOL_ERROR = 1
    INTERNAL_ERROR = 2


@dataclass(frozen=True, slots=True)
class Header:
    type: FrameType
    flags: Flag
    stream_id: int
    length: int


def pack_header(frame_type: FrameType, flags: Flag, stream_id: int, length: int) -> bytes:
    return _HEADER.pack(VERSION, frame_type, flags, stream_id, length)


def unpack_header(data: bytes | bytearray | memoryview, offset: int = 0) -> Header:
    version, frame_type, flags, stream_id, length = _HEADER.unpack_from(data, offset)
    if version != VERSION:
        raise YamuxError(f"unsupported yamux version {version}", code=GoAwayCode.PROTOCOL_ERROR)
    if frame_type > FrameType.GO_AWAY:
        raise YamuxError(f"unknown yamux frame type {frame_type}", code=GoAwayCode.PROTOCOL_ERROR)
    return Header(FrameType(frame_type), Flag(flags & 0xF), stream_id, length)


HEADER_LEN = YAMUX_HEADER_LEN
