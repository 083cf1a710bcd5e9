"""The Yamux driver: one connection, its reader, its single writer, keep-alive, and its streams.

The sans-IO `YamuxSession` decides everything about frames and windows; this module only moves
bytes between it and the secure channel and wakes the tasks waiting on a stream.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from enum import Enum
from typing import Protocol

import anyio
import anyio.abc
from multiaddr import Multiaddr

from shardroute import limits
from shardroute.errors import (
    ConnectionClosed,
    LocalProtocolError,
    RemoteProtocolError,
    ResourceLimitExceeded,
    StreamReset,
)
from shardroute.identity.peer_id import PeerId
from shardroute.net.addresses import scope_of
from shardroute.net.negotiate import LazyProtocol
from shardroute.net.resources import Reservation
from shardroute.net.secure import SecureChannel
from shardroute.protocol import yamux
from shardroute.wakeup import Wakeup

log = logging.getLogger(__name__)


class Direction(Enum):
    INBOUND = "inbound"
    OUTBOUND = "outbound"


class BufferMemory(Protocol):
    """Where a connection accounts the bytes its streams hold unread."""

    def grow(self, n: int) -> bool:
        """False when `n` more bytes would be over budget."""
        ...

    def shrink(self, n: int) -> None: ...


class UnlimitedMemory:
    def grow(self, n: int) -> bool:
        return True

    def shrink(self, n: int) -> None:
        pass


async def _wait_until(wakeup: Wakeup, deadline: float | None) -> None:
    await wakeup.wait(deadline)


class MuxedStream:
    """One Yamux stream as an anyio-style byte stream (receive/send/send_eof/aclose/reset)."""

    def __init__(self, conn: MuxedConnection, stream_id: int, direction: Direction) -> None:
        self.conn = conn
        self.stream_id = stream_id
        self.direction = direction
        self.protocol: str | None = None
        self._buffer = bytearray()
        # Bytes handed back after protocol negotiation; never counted against the window twice.
        self._unacked_pushback = 0
        self._eof = False
        self._reset = False
        self._write_closed = False
        self._gone = False
        self._changed = Wakeup()
        self._held: list[Reservation] = []
        self._lazy: LazyProtocol | None = None  # a proposal not yet written / answer not read
        self._accounted = 0  # bytes of _buffer charged to the connection's memory budget

    @property
    def remote_peer(self) -> PeerId:
        return self.conn.remote_peer

    @property
    def unread_bytes(self) -> int:
        return len(self._buffer)

    @property
    def reusable(self) -> bool:
        """Open both ways, nothing unread and no protocol answer pending: a stream that can
        carry another request."""
        return not (
            self._eof
            or self._reset
            or self._write_closed
            or self._gone
            or self._buffer
            or self._lazy is not None
            or self.conn.closed
            or self.conn.draining
        )

    def negotiate_lazily(self, protocol: str) -> None:
        """Propose `protocol` with the first write and read the answer before the first read."""
        self._lazy = LazyProtocol(self, protocol)
        self.protocol = protocol

    async def confirm_protocol(self) -> None:
        """Wait for the peer's answer to a lazy proposal (nothing to do otherwise)."""
        lazy, self._lazy = self._lazy, None  # its reads come back through `receive`
        if lazy is not None:
            try:
                await lazy.confirm()
            except anyio.get_cancelled_exc_class():
                self._lazy = lazy  # re-callable: a cancelled wait lost nothing
                raise

    def hold(self, reservation: Reservation) -> None:
        """Keep `reservation` for as long as the stream lives."""
        self._held.append(reservation)

    def refuse(self) -> None:
        """Reset a stream the peer just opened, before anything reads it (over a limit)."""
        self._reset_now()

    def _release(self) -> None:
        held, self._held = self._held, []
        for reservation in held:
            reservation.release()
        # What is still buffered stays readable; it no longer counts against the peer.
        if self._accounted:
            self.conn.memory.shrink(self._accounted)
            self._accounted = 0

    def _discard_buffer(self) -> None:
        self._buffer.clear()
        if self._accounted:
            self.conn.memory.shrink(self._accounted)
            self._accounted = 0

    # -- called by the connection's reader --
    def _on_data(self, data: bytes) -> None:
        if self._gone:
            # We closed our side and stopped reading: hand the window straight back.
            self.conn.session.acknowledge_received(self.stream_id, len(data))
            return
        if not self.conn.memory.grow(len(data)):
            log.info("resetting stream %d of %s: over its memory", self.stream_id, self.remote_peer)
            self._reset_now()
            return
        self._accounted += len(data)
        self._buffer += data
        self._changed.fire()

    def _on_eof(self) -> None:
        self._eof = True
        self._changed.fire()

    def _on_reset(self) -> None:
        self._reset = True
        self._changed.fire()

    def _on_window(self) -> None:
        self._changed.fire()

    def unread(self, data: bytes) -> None:
        """Put back bytes that arrived pipelined with protocol negotiation."""
        if data:
            self._buffer[:0] = data
            self._unacked_pushback += len(data)
            if self.conn.memory.grow(len(data)):
                self._accounted += len(data)

    # -- the application side --
    async def receive(self, max_bytes: int = 65536, *, deadline: float | None = None) -> bytes:
        """Up to `max_bytes`; with `deadline` (anyio.current_time() base), TimeoutError if
        nothing arrived by then. The deadline costs nothing when data is already here."""
        if self._lazy is not None:
            await self.confirm_protocol()
        while not self._buffer:
            if self._reset:
                raise StreamReset(f"stream {self.stream_id} was reset")
            if self._eof:
                raise anyio.EndOfStream
            if self.conn.closed:
                raise ConnectionClosed("connection closed")
            await _wait_until(self._changed, deadline)
        chunk = bytes(self._buffer[:max_bytes])
        del self._buffer[:max_bytes]
        credit = len(chunk)
        if self._accounted:
            freed = min(self._accounted, credit)
            self._accounted -= freed
            self.conn.memory.shrink(freed)
        if self._unacked_pushback:
            taken = min(self._unacked_pushback, credit)
            self._unacked_pushback -= taken
            credit -= taken
        if credit and not self._reset:
            self.conn.session.acknowledge_received(self.stream_id, credit)
            self.conn.wake_writer()
        return chunk

    async def receive_exactly(self, n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            out += await self.receive(n - len(out))
        return bytes(out)

    async def send(
        self, data: bytes | bytearray | memoryview, *, deadline: float | None = None
    ) -> None:
        """Queue all of `data` for the writer; with `deadline`, TimeoutError if the peer's
        window or our bounded output kept it waiting past then (free when nothing waits)."""
        if self._lazy is not None and (proposal := self._lazy.take_proposal()):
            data = proposal + bytes(data)  # one frame: proposal and first message together
        view = memoryview(data)
        while view:
            if self._reset:
                raise StreamReset(f"stream {self.stream_id} was reset")
            if self.conn.closed:
                raise ConnectionClosed("connection closed")
            queued = self.conn.session.queued_output
            if queued >= limits.YAMUX_OUTPUT_HIGH_WATER:
                # until the writer took what was queued
                await _wait_until(self.conn.output_drained, deadline)
                continue
            # No more than fits under the mark: a peer that granted a large window and stopped
            # reading would otherwise have a whole answer (up to its window) queued at once.
            room = limits.YAMUX_OUTPUT_HIGH_WATER - queued
            taken = self.conn.session.send_data(self.stream_id, view[:room])
            if taken:
                view = view[taken:]
                self.conn.wake_writer()
            else:
                await _wait_until(self._changed, deadline)

    async def send_eof(self) -> None:
        if self._write_closed or self._reset or self.conn.closed:
            return
        if self._lazy is not None and (proposal := self._lazy.take_proposal()):
            await self.send(proposal)
        self._write_closed = True
        self.conn.session.close_stream(self.stream_id)
        if not self.conn.session.has_stream(self.stream_id):
            self.conn._forget(self.stream_id)  # both sides have now finished
        self.conn.wake_writer()

    async def aclose(self) -> None:
        """Finish our side and stop reading; the stream is gone once the peer finishes too."""
        await self.send_eof()
        if not self._gone:
            self._gone = True
            if self._buffer and not self._reset and not self.conn.closed:
                self.conn.session.acknowledge_received(
                    self.stream_id, max(0, len(self._buffer) - self._unacked_pushback)
                )
                self.conn.wake_writer()
            self._discard_buffer()

    async def reset(self) -> None:
        self._reset_now()

    def _reset_now(self) -> None:
        if self._reset or self.conn.closed:
            return
        self._reset = True
        self._gone = True
        self._discard_buffer()
        try:
            self.conn.session.reset_stream(self.stream_id)
        except LocalProtocolError:
            pass  # the session already forgot it
        self.conn.wake_writer()
        self.conn._forget(self.stream_id)
        self._changed.fire()

    async def __aenter__(self) -> MuxedStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class MuxedConnection:
    """A secured, multiplexed connection to one peer."""

    def __init__(
        self,
        channel: SecureChannel,
        *,
        direction: Direction,
        remote_addr: Multiaddr,
        initial_plaintext: bytes,
        on_stream: Callable[[MuxedStream], None],
        max_streams: int = limits.YAMUX_MAX_STREAMS,
        keepalive_interval: float = limits.YAMUX_KEEPALIVE_INTERVAL,
        ping_timeout: float = limits.YAMUX_PING_TIMEOUT,
        memory: BufferMemory | None = None,
        write_timeout: float = limits.WRITE_TIMEOUT,
        max_queued_output: int = limits.YAMUX_MAX_QUEUED_OUTPUT,
    ) -> None:
        self.channel = channel
        self.direction = direction
        self.remote_peer: PeerId = channel.remote_peer
        self.remote_addr = remote_addr
        # What the peer can use of the addresses we pass on, asked once per peer entry of
        # every answer: decided once.
        self.remote_scope = scope_of(remote_addr)
        self.session = yamux.YamuxSession(
            is_client=direction is Direction.OUTBOUND, max_streams=max_streams
        )
        self.streams: dict[int, MuxedStream] = {}
        self.memory: BufferMemory = memory or UnlimitedMemory()
        self._write_timeout = write_timeout
        self._max_queued_output = max_queued_output
        self.streams_changed = Wakeup()  # a stream ended
        self.output_drained = Wakeup()  # the writer took the queued frames
        self._write_started: float | None = None  # monotonic time the current write began
        self.closed = False
        self.close_reason: str | None = None
        self._on_stream = on_stream
        self._initial = initial_plaintext
        self._wake = Wakeup()
        self._pong = Wakeup()
        self._last_pong: int | None = None
        self._keepalive_interval = keepalive_interval
        self._ping_timeout = ping_timeout
        self._tg: anyio.abc.TaskGroup | None = None
        self._done = anyio.Event()
        # No new streams of ours go on it (a duplicate, or the peer sent GoAway).
        self.draining = False

    def wake_writer(self) -> None:
        self._wake.fire()

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve the connection until it closes; cancels its stream handlers when it ends."""
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                tg.start_soon(self._writer)
                tg.start_soon(self._watch_writes)
                tg.start_soon(self._keepalive)
                task_status.started()
                try:
                    await self._reader()
                finally:
                    self._mark_closed(self.close_reason or "reader ended")
                    # Let the writer drain a queued GoAway, then stop everything.
                    with anyio.move_on_after(1, shield=True):
                        await self._flush_now()
                    tg.cancel_scope.cancel()
        finally:
            with anyio.move_on_after(1, shield=True):
                await self.channel.aclose()
            self._done.set()

    def spawn(self, fn: Callable[..., object], *args: object) -> None:
        """Run a stream handler in this connection's task group (it dies with the connection)."""
        if self._tg is None or self.closed:
            raise ConnectionClosed("connection closed")
        self._tg.start_soon(fn, *args)  # type: ignore[arg-type]

    async def open_stream(self) -> MuxedStream:
        if self.closed or self.draining:
            raise ConnectionClosed("connection closed")
        try:
            stream_id = self.session.open_stream()
        except ResourceLimitExceeded:
            raise
        except LocalProtocolError as exc:
            raise ConnectionClosed(f"cannot open a stream: {exc}") from exc
        stream = MuxedStream(self, stream_id, Direction.OUTBOUND)
        self.streams[stream_id] = stream
        self.wake_writer()
        return stream

    async def close(self, reason: str = "closed locally") -> None:
        if not self.closed:
            self.close_reason = reason
            self._mark_closed(reason)
            if self._tg is not None:
                self._tg.cancel_scope.cancel()
        with anyio.move_on_after(2, shield=True):
            await self._done.wait()

    async def wait_closed(self) -> None:
        await self._done.wait()

    async def ping(self, timeout: float = limits.YAMUX_PING_TIMEOUT) -> bool:  # noqa: ASYNC109
        opaque = self.session.send_ping()
        self.wake_writer()
        with anyio.move_on_after(timeout):
            while self._last_pong != opaque:
                await self._pong.wait()
            return True
        return False

    # -- internals --
    def _forget(self, stream_id: int) -> MuxedStream | None:
        stream = self.streams.pop(stream_id, None)
        if stream is not None:
            stream._release()
            self.streams_changed.fire()
        return stream

    def _mark_closed(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self.close_reason = self.close_reason or reason
        for stream in list(self.streams.values()):
            stream._on_reset()
            stream._release()
        self.streams.clear()
        self.streams_changed.fire()
        self._wake.fire()
        self.output_drained.fire()

    async def _flush_now(self) -> None:
        if self._write_started is not None:
            return  # the writer is mid-write; it cannot be joined
        data = self.session.data_to_send()
        if data:
            try:
                await self.channel.send(data)
            except ConnectionClosed:
                pass

    async def _writer(self) -> None:
        try:
            while True:
                data = self.session.data_to_send()
                if data:
                    self.output_drained.fire()
                    self._write_started = time.monotonic()
                    await self.channel.send(data)
                    self._write_started = None
                    continue
                if self.closed:
                    return
                await self._wake.wait()
        except ConnectionClosed as exc:
            self.close_reason = self.close_reason or f"write failed: {exc}"
            if self._tg is not None:
                self._tg.cancel_scope.cancel()

    async def _reader(self) -> None:
        try:
            if self._initial:
                self._process(self._initial)
            while True:
                data = await self.channel.receive()
                self._process(data)
        except ConnectionClosed as exc:
            self.close_reason = self.close_reason or f"peer closed: {exc}"
        except RemoteProtocolError as exc:  # Yamux framing or a Noise frame that fails to decrypt
            log.info("closing connection to %s: %s", self.remote_peer, exc)
            self.close_reason = f"protocol error: {exc}"

    def _process(self, data: bytes) -> None:
        for event in self.session.receive_data(data):
            if isinstance(event, yamux.DataReceived):
                stream = self.streams.get(event.stream_id)
                if stream is not None:
                    stream._on_data(event.data)
                else:
                    self.session.acknowledge_received(event.stream_id, len(event.data))
            elif isinstance(event, yamux.StreamOpened):
                # A draining connection (the loser of a simultaneous dial) still serves what
                # the peer opens on it: go keeps both connections and uses either.
                stream = MuxedStream(self, event.stream_id, Direction.INBOUND)
                self.streams[event.stream_id] = stream
                self._on_stream(stream)
            elif isinstance(event, yamux.StreamEnded):
                stream = self.streams.get(event.stream_id)
                if stream is not None:
                    stream._on_eof()
            elif isinstance(event, yamux.StreamReset):
                stream = self._forget(event.stream_id)
                if stream is not None:
                    stream._on_reset()
            elif isinstance(event, yamux.WindowUpdated):
                stream = self.streams.get(event.stream_id)
                if stream is not None:
                    stream._on_window()
            elif isinstance(event, yamux.StreamClosed):
                self._forget(event.stream_id)
            elif isinstance(event, yamux.PingAcknowledged):
                self._last_pong = event.opaque
                self._pong.fire()
            elif isinstance(event, yamux.GoAwayReceived):
                self.draining = True
                self.close_reason = f"peer sent GoAway code {event.code}"
        if self.session.queued_output > self._max_queued_output:
            # A peer that makes us queue answers (pings, window updates) it never reads.
            raise RemoteProtocolError(
                f"{self.session.queued_output} bytes queued for a peer that does not read"
            )
        self.wake_writer()

    async def _watch_writes(self) -> None:
        """End the connection once one write has made no progress for the write timeout (the
        peer stopped reading). A check every quarter of it rather than a deadline per write:
        nearly every write finishes at once, and a deadline each put a timer and a cancel scope
        on the hot path (a tenth of the CPU of a lookup)."""
        period = self._write_timeout / 4
        while True:
            await anyio.sleep(period)
            started = self._write_started
            if started is not None and time.monotonic() - started >= self._write_timeout:
                log.info("closing connection to %s: it stopped reading", self.remote_peer)
                self.close_reason = self.close_reason or "write timed out"
                if self._tg is not None:
                    self._tg.cancel_scope.cancel()
                return

    async def _keepalive(self) -> None:
        while not self.closed:
            await anyio.sleep(self._keepalive_interval)
            if not await self.ping(self._ping_timeout):
                log.info("closing connection to %s: keep-alive ping unanswered", self.remote_peer)
                self.close_reason = "keep-alive timeout"
                if self._tg is not None:
                    self._tg.cancel_scope.cancel()
                return
