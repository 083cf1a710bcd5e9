"""A Yamux session, sans-IO: frames in, events and frames out, flow control per stream.

Windows follow the spec: 256 KiB per stream and direction to start, WindowUpdate lengths are
deltas, and a peer that sends past the window it was granted breaks the session. We announce
consumed bytes back once they reach half the window, as go-yamux does.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from shardroute import limits
from shardroute.errors import LocalProtocolError, ResourceLimitExceeded, YamuxError
from shardroute.protocol.yamux.frames import (
    HEADER_LEN,
    Flag,
    FrameType,
    GoAwayCode,
    Header,
    pack_header,
    unpack_header,
)


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamOpened:
    stream_id: int


@dataclass(frozen=True, slots=True, kw_only=True)
class DataReceived:
    stream_id: int
    data: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamEnded:
    stream_id: int


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamReset:
    stream_id: int


@dataclass(frozen=True, slots=True, kw_only=True)
class WindowUpdated:
    stream_id: int
    window: int


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamClosed:
    stream_id: int


@dataclass(frozen=True, slots=True, kw_only=True)
class PingAcknowledged:
    opaque: int


@dataclass(frozen=True, slots=True, kw_only=True)
class GoAwayReceived:
    code: int


Event = (
    StreamOpened
    | DataReceived
    | StreamEnded
    | StreamReset
    | WindowUpdated
    | StreamClosed
    | PingAcknowledged
    | GoAwayReceived
)


class StreamState(enum.Enum):
    """go-yamux's stream states; the half-close states are `local_fin`/`remote_fin`."""

    SYN_SENT = "syn-sent"
    SYN_RECEIVED = "syn-received"
    ESTABLISHED = "established"
    FINISHED = "finished"


class StreamInput(enum.Enum):
    RECEIVE_ACK = "receive-ack"
    SEND_ACK = "send-ack"
    BOTH_FIN = "both-fin"


_TRANSITIONS: dict[tuple[StreamState, StreamInput], StreamState] = {
    (StreamState.SYN_SENT, StreamInput.RECEIVE_ACK): StreamState.ESTABLISHED,
    (StreamState.SYN_RECEIVED, StreamInput.SEND_ACK): StreamState.ESTABLISHED,
    (StreamState.ESTABLISHED, StreamInput.RECEIVE_ACK): StreamState.ESTABLISHED,
    (StreamState.SYN_SENT, StreamInput.BOTH_FIN): StreamState.FINISHED,
    (StreamState.ESTABLISHED, StreamInput.BOTH_FIN): StreamState.FINISHED,
}


class _Stream:
    __slots__ = (
        "local_fin",
        "recv_window",
        "remote_fin",
        "send_window",
        "state",
        "stream_id",
        "unannounced",
    )

    def __init__(self, stream_id: int, state: StreamState, window: int) -> None:
        self.stream_id = stream_id
        self.state = state
        self.send_window = window
        self.recv_window = window  # bytes the peer may still send before we announce more
        self.unannounced = 0  # consumed by the application, not yet given back
        self.local_fin = False
        self.remote_fin = False

    def apply(self, what: StreamInput) -> None:
        nxt = _TRANSITIONS.get((self.state, what))
        if nxt is None:
            raise LocalProtocolError(
                f"stream {self.stream_id}: {what.value} in state {self.state.value}"
            )
        self.state = nxt


class YamuxSession:
    def __init__(
        self,
        *,
        is_client: bool,
        max_streams: int = limits.YAMUX_MAX_STREAMS,
        initial_window: int = limits.YAMUX_INITIAL_WINDOW,
        max_window: int = limits.YAMUX_MAX_WINDOW,
        max_frame_payload: int = limits.YAMUX_MAX_FRAME_PAYLOAD,
    ) -> None:
        self.is_client = is_client
        self.max_streams = max_streams
        self.initial_window = initial_window
        self.max_window = max_window
        self.max_frame_payload = max_frame_payload
        self._streams: dict[int, _Stream] = {}
        self._next_id = 1 if is_client else 2
        self._unacked_outbound = 0
        self._in = bytearray()
        self._pos = 0
        self._out = bytearray()
        self._next_ping = 1
        self.go_away_sent = False
        self.go_away_received = False
        self.closed = False

    # ------------------------------------------------------------------ output
    @property
    def queued_output(self) -> int:
        """Bytes framed and waiting for `data_to_send`."""
        return len(self._out)

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    def _frame(self, frame_type: FrameType, flags: Flag, stream_id: int, length: int) -> None:
        self._out += pack_header(frame_type, flags, stream_id, length)

    # ------------------------------------------------------------------ local API
    def stream_ids(self) -> list[int]:
        return list(self._streams)

    def has_stream(self, stream_id: int) -> bool:
        return stream_id in self._streams

    def _stream(self, stream_id: int) -> _Stream:
        stream = self._streams.get(stream_id)
        if stream is None:
            raise LocalProtocolError(f"no live stream {stream_id}")
        return stream

    def open_stream(self) -> int:
        if self.closed or self.go_away_sent or self.go_away_received:
            raise LocalProtocolError("the session is going away; no new streams")
        if len(self._streams) >= self.max_streams:
            raise ResourceLimitExceeded(f"stream limit of {self.max_streams} reached")
        if self._unacked_outbound >= limits.YAMUX_MAX_ACK_BACKLOG:
            raise ResourceLimitExceeded("too many streams await the peer's ACK")
        stream_id = self._next_id
        if stream_id > 0xFFFFFFFF:
            raise LocalProtocolError("stream IDs exhausted")
        self._next_id += 2
        self._streams[stream_id] = _Stream(stream_id, StreamState.SYN_SENT, self.initial_window)
        self._unacked_outbound += 1
        self._frame(FrameType.WINDOW_UPDATE, Flag.SYN, stream_id, 0)
        return stream_id

    def send_window(self, stream_id: int) -> int:
        return self._stream(stream_id).send_window

    def send_data(self, stream_id: int, data: bytes | bytearray | memoryview) -> int:
        stream = self._stream(stream_id)
        if stream.local_fin:
            raise LocalProtocolError(f"stream {stream_id} is closed for writing")
        if self.closed:
            raise LocalProtocolError("session closed")
        taken = min(len(data), stream.send_window)
        view = memoryview(data)[:taken]
        step = self.max_frame_payload
        for start in range(0, taken, step):
            chunk = view[start : start + step]
            self._frame(FrameType.DATA, Flag.NONE, stream_id, len(chunk))
            self._out += chunk
        stream.send_window -= taken
        return taken

    def close_stream(self, stream_id: int) -> None:
        stream = self._stream(stream_id)
        if stream.local_fin:
            return
        stream.local_fin = True
        self._frame(FrameType.WINDOW_UPDATE, Flag.FIN, stream_id, 0)
        if stream.remote_fin:
            self._finish(stream)

    def reset_stream(self, stream_id: int) -> None:
        stream = self._stream(stream_id)
        self._frame(FrameType.WINDOW_UPDATE, Flag.RST, stream_id, 0)
        self._forget(stream)

    def acknowledge_received(self, stream_id: int, n: int) -> None:
        stream = self._streams.get(stream_id)
        if stream is None or n <= 0 or stream.remote_fin:
            return
        stream.unannounced += n
        if stream.unannounced >= self.initial_window // 2:
            delta = min(stream.unannounced, self.max_window - stream.recv_window)
            if delta > 0:
                stream.recv_window += delta
                self._frame(FrameType.WINDOW_UPDATE, Flag.NONE, stream_id, delta)
            stream.unannounced = 0

    def send_ping(self) -> int:
        opaque = self._next_ping
        self._next_ping = (self._next_ping + 1) & 0xFFFFFFFF or 1
        self._frame(FrameType.PING, Flag.SYN, 0, opaque)
        return opaque

    def go_away(self, code: int = GoAwayCode.NORMAL) -> None:
        if not self.go_away_sent:
            self.go_away_sent = True
            self._frame(FrameType.GO_AWAY, Flag.NONE, 0, code)

    # ------------------------------------------------------------------ input
    def receive_data(self, data: bytes | bytearray | memoryview) -> list[Event]:
        if self.closed:
            return []
        self._in += data
        events: list[Event] = []
        buf = self._in
        try:
            while len(buf) - self._pos >= HEADER_LEN:
                header = unpack_header(buf, self._pos)
                if header.type is FrameType.DATA:
                    # Judged on the header, before the body is buffered: a frame past the
                    # stream's window must not make us hold up to max_window bytes first.
                    known = self._streams.get(header.stream_id)
                    window = self.initial_window if known is None else known.recv_window
                    if header.length > max(window, 0):
                        raise self._protocol_error(
                            f"data frame of {header.length} bytes exceeds the window of {window}"
                        )
                    end = self._pos + HEADER_LEN + header.length
                    if len(buf) < end:
                        break
                    body = bytes(buf[self._pos + HEADER_LEN : end])
                    self._pos = end
                else:
                    body = b""
                    self._pos += HEADER_LEN
                self._handle(header, body, events)
        except YamuxError as exc:
            self.go_away(exc.code)
            self.closed = True
            raise
        finally:
            if self._pos > 1 << 20 or self._pos == len(buf):
                del buf[: self._pos]
                self._pos = 0
        return events

    def _protocol_error(self, message: str) -> YamuxError:
        return YamuxError(message, code=GoAwayCode.PROTOCOL_ERROR)

    def _handle(self, header: Header, body: bytes, events: list[Event]) -> None:
        if header.type is FrameType.PING:
            if header.stream_id != 0:
                raise self._protocol_error("ping on a stream")
            if header.flags & Flag.SYN:
                self._frame(FrameType.PING, Flag.ACK, 0, header.length)
            elif header.flags & Flag.ACK:
                events.append(PingAcknowledged(opaque=header.length))
            return
        if header.type is FrameType.GO_AWAY:
            self.go_away_received = True
            events.append(GoAwayReceived(code=header.length))
            return
        if header.stream_id == 0:
            raise self._protocol_error(f"{header.type.name} frame on stream 0")
        stream = self._streams.get(header.stream_id)
        if header.flags & Flag.SYN:
            stream = self._accept(header.stream_id, stream, events)
            if stream is None:
                return
        elif stream is None:
            return  # a frame for a stream we forgot (reset, or finished): go ignores it too
        if header.flags & Flag.ACK and stream.state is StreamState.SYN_SENT:
            stream.apply(StreamInput.RECEIVE_ACK)
            self._unacked_outbound -= 1
        if header.type is FrameType.WINDOW_UPDATE:
            if header.length:
                stream.send_window += header.length
                if stream.send_window > 0xFFFFFFFF:
                    raise self._protocol_error(f"stream {stream.stream_id} window overflow")
                events.append(WindowUpdated(stream_id=stream.stream_id, window=stream.send_window))
        elif body:
            if stream.remote_fin:
                raise self._protocol_error(f"data on stream {stream.stream_id} after its FIN")
            if len(body) > stream.recv_window:
                raise self._protocol_error(
                    f"stream {stream.stream_id} sent {len(body)} bytes "
                    f"past a window of {stream.recv_window}"
                )
            stream.recv_window -= len(body)
            events.append(DataReceived(stream_id=stream.stream_id, data=body))
        if header.flags & Flag.RST:
            self._forget(stream)
            events.append(StreamReset(stream_id=stream.stream_id))
            return
        if header.flags & Flag.FIN and not stream.remote_fin:
            stream.remote_fin = True
            events.append(StreamEnded(stream_id=stream.stream_id))
            if stream.local_fin:
                self._finish(stream)
                events.append(StreamClosed(stream_id=stream.stream_id))

    def _accept(
        self, stream_id: int, existing: _Stream | None, events: list[Event]
    ) -> _Stream | None:
        if existing is not None:
            raise self._protocol_error(f"SYN for existing stream {stream_id}")
        if (stream_id % 2 == 1) == self.is_client:
            raise self._protocol_error(f"peer opened stream {stream_id} with our parity")
        if self.go_away_sent or len(self._streams) >= self.max_streams:
            self._frame(FrameType.WINDOW_UPDATE, Flag.RST, stream_id, 0)
            return None
        stream = _Stream(stream_id, StreamState.SYN_RECEIVED, self.initial_window)
        self._streams[stream_id] = stream
        self._frame(FrameType.WINDOW_UPDATE, Flag.ACK, stream_id, 0)
        stream.apply(StreamInput.SEND_ACK)
        events.append(StreamOpened(stream_id=stream_id))
        return stream

    def _finish(self, stream: _Stream) -> None:
        self._forget(stream)
        stream.apply(StreamInput.BOTH_FIN)

    def _forget(self, stream: _Stream) -> None:
        if stream.state is StreamState.SYN_SENT:
            self._unacked_outbound -= 1
        self._streams.pop(stream.stream_id, None)
