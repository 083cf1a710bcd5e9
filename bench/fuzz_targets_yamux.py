"""Fuzz harnesses for the Yamux muxer: frame headers and a whole session."""

from __future__ import annotations

import struct

from bench.fuzz_fixtures import _fail, _layout, _seed
from shardroute.errors import ResourceLimitExceeded, YamuxError
from shardroute.limits import YAMUX_HEADER_LEN
from shardroute.protocol.yamux.frames import Flag, FrameType, GoAwayCode, pack_header, unpack_header
from shardroute.protocol.yamux.session import (
    DataReceived,
    StreamClosed,
    StreamOpened,
    StreamReset,
    YamuxSession,
)


# ------------------------------------------------------------------------------ yamux frames
def fuzz_yamux_frames(data: bytes) -> None:
    offset = data[0] % 4 if data else 0
    if len(data) < offset + YAMUX_HEADER_LEN:
        return  # callers never pass less than a header (the session waits for 12 bytes)
    try:
        header = unpack_header(data, offset)
    except YamuxError as exc:
        if exc.code != GoAwayCode.PROTOCOL_ERROR:
            _fail("a bad header did not map to a protocol-error GoAway")
        return
    raw = data[offset : offset + YAMUX_HEADER_LEN]
    flags = struct.unpack(">H", raw[2:4])[0] & 0xF
    if pack_header(header.type, header.flags, header.stream_id, header.length) != (
        raw[:2] + struct.pack(">H", flags) + raw[4:]
    ):
        _fail("header does not re-pack to its bytes")


def seeds_yamux_frames() -> list[bytes]:
    return [
        b"\x00" + pack_header(FrameType.DATA, Flag.SYN, 1, 5),
        b"\x01\xff" + pack_header(FrameType.WINDOW_UPDATE, Flag.ACK | Flag.FIN, 2, 1 << 20),
        b"\x02\xff\xff" + pack_header(FrameType.PING, Flag.SYN, 0, 7),
        b"\x03\xff\xff\xff" + pack_header(FrameType.GO_AWAY, Flag.NONE, 0, 2),
    ]


# ------------------------------------------------------------------------------ yamux session
def _parse_own_output(out: bytes, granted: dict[int, int]) -> bytes:
    """Our output must be whole, valid frames; counts the window we grant per stream."""
    pos = 0
    go_away = b""
    while pos < len(out):
        if len(out) - pos < YAMUX_HEADER_LEN:
            _fail("we sent a partial yamux header")
        header = unpack_header(out, pos)
        pos += YAMUX_HEADER_LEN
        if header.type is FrameType.DATA:
            pos += header.length
            if pos > len(out):
                _fail("we sent a partial yamux data frame")
        elif header.type is FrameType.WINDOW_UPDATE:
            granted[header.stream_id] = granted.get(header.stream_id, 0) + header.length
        elif header.type is FrameType.GO_AWAY:
            go_away = out[pos - YAMUX_HEADER_LEN : pos]
    return go_away


def fuzz_yamux_session(data: bytes) -> None:
    """Inbound bytes interleaved with local calls. Errors are YamuxError alone, a session that
    raised has queued its GoAway, our output is valid frames, and no stream is ever handed
    more data than the window we granted it."""
    mode, _, body = _layout(data)
    small = bool(mode & 2)  # tiny windows and stream caps reach the limits in short inputs
    window = 64 if small else 256 * 1024
    session = YamuxSession(
        is_client=bool(mode & 1),
        max_streams=3 if small else 1024,
        initial_window=window,
        max_window=4 * window,
        max_frame_payload=16 if small else 64 * 1024,
    )
    granted: dict[int, int] = {}
    received: dict[int, int] = {}
    closed_locally: set[int] = set()
    pos = 0

    def live(index: int) -> int | None:
        ids = session.stream_ids()
        return ids[index % len(ids)] if ids else None

    while pos + 2 <= len(body):
        op, arg = body[pos] % 9, body[pos + 1]
        pos += 2
        if op <= 1:  # raw inbound bytes (op 1: a header of ours plus `arg` body bytes)
            chunk = body[pos : pos + arg]
            pos += arg
            try:
                events = session.receive_data(chunk)
            except YamuxError:
                if not session.closed:
                    _fail("a yamux error left the session open")
                if not session.go_away_sent:
                    _fail("a yamux error queued no GoAway")
                _parse_own_output(session.data_to_send(), granted)
                return
            for i, event in enumerate(events):
                if isinstance(event, StreamOpened):
                    granted[event.stream_id] = 0
                    received[event.stream_id] = 0
                    closed_locally.discard(event.stream_id)
                elif isinstance(event, DataReceived):
                    total = received.get(event.stream_id, 0) + len(event.data)
                    received[event.stream_id] = total
                    if total > window + granted.get(event.stream_id, 0):
                        _fail(f"stream {event.stream_id} took {total} bytes past its window")
                    session.acknowledge_received(event.stream_id, len(event.data))
                elif (
                    isinstance(event, StreamReset | StreamClosed)
                    and session.has_stream(event.stream_id)
                    # the peer may SYN a forgotten ID again later in the batch (go allows it)
                    and StreamOpened(stream_id=event.stream_id) not in events[i:]
                ):
                    _fail(f"stream {event.stream_id} is still live after {event!r}")
        elif op == 2:
            if not (session.closed or session.go_away_sent or session.go_away_received):
                try:
                    stream_id = session.open_stream()
                except ResourceLimitExceeded:
                    pass
                else:
                    granted[stream_id] = 0
                    received[stream_id] = 0
        elif op == 3 and not session.closed:
            target = live(arg)
            if target is not None and target not in closed_locally:
                session.send_data(target, body[pos : pos + arg])
                pos += arg
        elif op == 4:
            target = live(arg)
            if target is not None:
                session.close_stream(target)
                closed_locally.add(target)
        elif op == 5:
            target = live(arg)
            if target is not None:
                session.reset_stream(target)
        elif op == 6:
            target = live(arg)
            if target is not None:
                session.acknowledge_received(target, arg * 16)
        elif op == 7:
            session.send_ping()
        else:
            session.go_away()
        _parse_own_output(session.data_to_send(), granted)


def _chunk_op(raw: bytes) -> bytes:
    out = bytearray()
    for start in range(0, len(raw), 255):
        piece = raw[start : start + 255]
        out += bytes([0, len(piece)]) + piece
    return bytes(out)


def seeds_yamux_session() -> list[bytes]:
    def frame_(
        t: FrameType, f: Flag, sid: int, body: bytes = b"", length: int | None = None
    ) -> bytes:
        return pack_header(t, f, sid, len(body) if length is None else length) + body

    inbound_even = (
        frame_(FrameType.WINDOW_UPDATE, Flag.SYN, 2, length=0)
        + frame_(FrameType.DATA, Flag.NONE, 2, b"hello")
        + frame_(FrameType.WINDOW_UPDATE, Flag.NONE, 2, length=1000)
        + frame_(FrameType.DATA, Flag.FIN, 2, b"bye")
        + frame_(FrameType.PING, Flag.SYN, 0, length=9)
    )
    inbound_odd = (
        frame_(FrameType.DATA, Flag.SYN, 1, b"x" * 40)
        + frame_(FrameType.DATA, Flag.NONE, 1, b"y" * 40)
        + frame_(FrameType.WINDOW_UPDATE, Flag.RST, 1, length=0)
        + frame_(FrameType.GO_AWAY, Flag.NONE, 0, length=0)
    )
    # A client opens stream 1; the server ACKs it, sends data and FIN; we close too.
    ack = frame_(FrameType.WINDOW_UPDATE, Flag.ACK, 1, length=0) + frame_(
        FrameType.DATA, Flag.FIN, 1, b"reply"
    )
    local = b"\x02\x00\x03\x04ping" + _chunk_op(ack) + b"\x04\x00\x07\x00\x08\x00"
    return [
        _seed(1, 0, _chunk_op(inbound_even)),
        _seed(3, 0, _chunk_op(inbound_even)),
        _seed(0, 0, _chunk_op(inbound_odd)),
        _seed(2, 0, _chunk_op(inbound_odd)),
        _seed(1, 0, local),
        _seed(3, 0, local),
    ]
