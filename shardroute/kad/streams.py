"""Kademlia over libp2p streams: the client side of `KadTransport` and the server stream loop.

Requests are uvarint-framed protobufs. A stream that carried a request is kept for the next one
to that peer (`kad.stream_pool`), as go keeps one per peer; when a kept stream turns out broken
or out of step, the request is retried once on a fresh stream, and a peer that breaks reuse too
often gets a fresh stream per request. The server loop answers several requests per inbound
stream, in order, as go expects. ADD_PROVIDER is never answered and no answer is ever read for
it (py-libp2p answers it anyway: the answer is found before the next request and the stream
dropped). A request the caller stops waiting for once it was sent (a lookup that has its answer
cancels the rest) is not reset: the peer answers anyway, so the reply is read and dropped in the
background and the stream kept, as rust-libp2p lets such requests finish.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

import anyio
import anyio.abc
from multiaddr import Multiaddr

from shardroute import limits
from shardroute.errors import (
    ConnectionClosed,
    DialError,
    KadMessageError,
    KadRequestFailed,
    KadRequestRejected,
    MessageTooLarge,
    RemoteProtocolError,
    RequestRefused,
    ResourceLimitExceeded,
    ShardrouteError,
    StoreError,
    StreamReset,
)
from shardroute.identity.peer_id import PeerId
from shardroute.kad.handler import KadHandler
from shardroute.kad.messages import (
    KadMessage,
    MessageType,
    PeerInfo,
    decode_message,
    encode_message,
)
from shardroute.kad.stream_pool import KeptStream, StreamPool, new_reader
from shardroute.protocol.varint import LengthPrefixedReader, frame

log = logging.getLogger(__name__)


class Stream(Protocol):
    """A libp2p stream as the kad transport uses it (`net.muxer.MuxedStream` is one)."""

    @property
    def remote_peer(self) -> PeerId: ...

    @property
    def reusable(self) -> bool:
        """Open both ways, nothing unread, nothing pending: it can carry another request."""
        ...

    @property
    def unread_bytes(self) -> int: ...

    async def receive(self, max_bytes: int = ..., *, deadline: float | None = None) -> bytes:
        """With `deadline` (anyio.current_time() base): TimeoutError if nothing came by then."""
        ...

    async def send(self, data: bytes, *, deadline: float | None = None) -> None:
        """With `deadline`: TimeoutError if the peer kept the write waiting past then."""
        ...

    async def send_eof(self) -> None: ...

    async def aclose(self) -> None: ...

    async def reset(self) -> None: ...

    async def confirm_protocol(self) -> None:
        """Wait until the peer accepted the stream's protocol (it may have been proposed
        together with the first message)."""
        ...


class StreamHost(Protocol):
    """What the kad transport needs of a libp2p host (`net.host.Host` is one)."""

    @property
    def peer_id(self) -> PeerId: ...

    def advertised_addrs(self, to: PeerId | None = None) -> list[Multiaddr]: ...

    def peer_addrs(self, peer: PeerId) -> Sequence[Multiaddr]: ...

    def shareable_to(self, peer: PeerId, addrs: Sequence[Multiaddr]) -> tuple[Multiaddr, ...]: ...

    def acceptable_from(
        self, peer: PeerId, addrs: Sequence[Multiaddr]
    ) -> tuple[Multiaddr, ...]: ...

    def remote_addr(self, peer: PeerId) -> Multiaddr | None: ...

    async def new_stream(
        self, peer: PeerId, protocols: Sequence[str], *, addrs: Sequence[Multiaddr] = ()
    ) -> Stream: ...


class AddressReports(Protocol):
    def peer_addrs_dropped(self, reason: str, count: int) -> None: ...


class TransportReports(AddressReports, Protocol):
    def kad_stream_used(self, outcome: str) -> None: ...


class ServerMetrics(AddressReports, Protocol):
    def request_received(self, message_type: str, result: str) -> None: ...

    def bad_message(self, reason: str, count: int = 1) -> None: ...

    def resource_refused(self, scope: str, resource: str) -> None: ...


class StreamTransport:
    """`KadTransport` over a real libp2p host."""

    def __init__(
        self, host: StreamHost, protocol_id: str, *, reports: TransportReports | None = None
    ) -> None:
        self.host = host
        self.reports = reports
        self.protocol_id = protocol_id
        self.self_id = host.peer_id
        self.kept: StreamPool[Stream] = StreamPool()
        self._drains: anyio.abc.TaskGroup | None = None
        self._draining = 0

    def self_addrs(self, to: PeerId | None = None) -> list[Multiaddr]:
        return self.host.advertised_addrs(to)

    def peer_addrs(self, peer: PeerId) -> Sequence[Multiaddr]:
        return self.host.peer_addrs(peer)

    def shareable_to(self, peer: PeerId, addrs: Sequence[Multiaddr]) -> tuple[Multiaddr, ...]:
        return self.host.shareable_to(peer, addrs)

    def acceptable_from(self, peer: PeerId, addrs: Sequence[Multiaddr]) -> tuple[Multiaddr, ...]:
        return self.host.acceptable_from(peer, addrs)

    def remote_addr(self, peer: PeerId) -> Multiaddr | None:
        return self.host.remote_addr(peer)

    async def run(self) -> None:
        """Close kept streams past their idle time: a connection carrying a stream looks busy
        to the connection manager, and the peer would reset it after its own idle timeout."""
        async with anyio.create_task_group() as self._drains:
            try:
                while True:
                    await anyio.sleep(limits.KAD_STREAM_IDLE / 2)
                    await _close_all(self.kept.expired(anyio.current_time()))
            finally:
                self._drains = None

    async def _open(self, peer: PeerInfo) -> KeptStream[Stream]:
        try:
            stream = await self.host.new_stream(peer.peer_id, [self.protocol_id], addrs=peer.addrs)
        except (ShardrouteError, OSError) as exc:
            raise KadRequestFailed(
                f"{peer.peer_id}: cannot open a {self.protocol_id} stream: {exc}"
            ) from exc
        self._used("opened")
        return KeptStream(stream, new_reader())

    async def _take(self, peer: PeerId) -> KeptStream[Stream] | None:
        kept, unusable = self.kept.take(peer, anyio.current_time())
        await _close_all(unusable)
        return kept

    async def _done_with(self, peer: PeerId, kept: KeptStream[Stream]) -> None:
        if not self.kept.give_back(peer, kept, anyio.current_time()):
            await kept.stream.aclose()

    async def request(self, peer: PeerInfo, message: KadMessage, *, timeout: float) -> KadMessage:  # noqa: ASYNC109
        deadline = anyio.current_time() + timeout
        try:
            with anyio.fail_after(timeout):
                kept = await self._take(peer.peer_id)
                if kept is not None:
                    try:
                        reply = await self._exchange(kept, message, deadline)
                    except (ShardrouteError, OSError, anyio.EndOfStream) as exc:
                        log.debug("kept stream to %s failed (%s): a fresh one", peer.peer_id, exc)
                        self._reuse_failed(peer.peer_id)
                    else:
                        if reply.type is message.type:
                            await self._done_with(peer.peer_id, kept)
                            self._used("reused")
                            return self._counted(reply)
                        # An answer to something else (py answers ADD_PROVIDER): out of step.
                        await _reset(kept.stream)
                        self._reuse_failed(peer.peer_id)
                kept = await self._open(peer)
                reply = await self._exchange(kept, message, deadline)
                await self._done_with(peer.peer_id, kept)
                return self._counted(reply)
        except TimeoutError as exc:
            raise KadRequestFailed(f"{peer.peer_id}: no answer within {timeout} s") from exc
        except KadRequestFailed:
            raise
        except (ShardrouteError, OSError, anyio.EndOfStream) as exc:
            raise KadRequestFailed(f"{peer.peer_id}: {type(exc).__name__}: {exc}") from exc

    async def _exchange(
        self, kept: KeptStream[Stream], message: KadMessage, deadline: float
    ) -> KadMessage:
        """One request and its reply on `kept`; on any failure the stream is reset. Cancelled
        while waiting for the reply before `deadline`, it leaves the reply to `_drain`."""
        drained = False
        try:
            await kept.stream.send(frame(encode_message(message)))
            try:
                body = await _read_message(kept.stream, kept.reader)
            except anyio.get_cancelled_exc_class():
                drained = self._drain_later(kept, deadline)
                raise
            if body is None:
                raise KadRequestFailed(
                    f"{kept.stream.remote_peer} closed the stream without answering"
                )
            return decode_message(body)
        except BaseException:
            if not drained:
                await _reset(kept.stream)
            raise

    def _drain_later(self, kept: KeptStream[Stream], deadline: float) -> bool:
        if (
            self._drains is None
            or self._draining >= limits.KAD_MAX_DRAINING
            or anyio.current_time() >= deadline  # the request's own timeout cancelled it
        ):
            return False
        self._draining += 1
        self._drains.start_soon(self._drain, kept, deadline)
        return True

    async def _drain(self, kept: KeptStream[Stream], deadline: float) -> None:
        """Read and drop the reply to an abandoned request, then keep the stream; reset it if
        the reply is not here within the grace or by the deadline. The reply is not decoded:
        the next request on the stream checks that its answer matches it."""
        try:
            with anyio.move_on_after(min(deadline - anyio.current_time(), limits.KAD_DRAIN_GRACE)):
                if await _read_message(kept.stream, kept.reader) is not None:
                    await self._done_with(kept.stream.remote_peer, kept)
                    self._used("drained")
                    return
            await _reset(kept.stream)  # no answer in time
        except BaseException as exc:
            await _reset(kept.stream)
            if not isinstance(exc, (ShardrouteError, OSError, anyio.EndOfStream)):
                raise
        finally:
            self._draining -= 1

    def _used(self, outcome: str) -> None:
        if self.reports is not None:
            self.reports.kad_stream_used(outcome)

    def _reuse_failed(self, peer: PeerId) -> None:
        self.kept.failed(peer)
        self._used("reuse_failed")

    def _counted(self, reply: KadMessage) -> KadMessage:
        if reply.addrs_over_cap and self.reports is not None:
            self.reports.peer_addrs_dropped("cap", reply.addrs_over_cap)
        return reply

    async def send(self, peer: PeerInfo, messages: Sequence[KadMessage], *, timeout: float) -> None:  # noqa: ASYNC109
        data = b"".join(frame(encode_message(m)) for m in messages)
        try:
            with anyio.fail_after(timeout):
                kept = await self._take(peer.peer_id)
                if kept is not None:
                    try:
                        await _write(kept.stream, data)
                    except (ShardrouteError, OSError) as exc:
                        log.debug("kept stream to %s failed (%s): a fresh one", peer.peer_id, exc)
                        self._reuse_failed(peer.peer_id)
                    else:
                        await self._done_with(peer.peer_id, kept)
                        self._used("reused")
                        return
                kept = await self._open(peer)
                await _write(kept.stream, data)
                # Nothing is answered: at least learn that the peer took the protocol.
                try:
                    await kept.stream.confirm_protocol()
                except BaseException:
                    await _reset(kept.stream)
                    raise
                await self._done_with(peer.peer_id, kept)
        except TimeoutError as exc:
            raise KadRequestFailed(f"{peer.peer_id}: send not done within {timeout} s") from exc
        except KadRequestFailed:
            raise
        except (ShardrouteError, OSError) as exc:
            raise KadRequestFailed(f"{peer.peer_id}: {type(exc).__name__}: {exc}") from exc


async def _write(stream: Stream, data: bytes) -> None:
    try:
        await stream.send(data)
    except BaseException:
        await _reset(stream)
        raise


async def _reset(stream: Stream) -> None:
    with anyio.CancelScope(shield=True):
        await stream.reset()


async def _close_all(kept: Sequence[KeptStream[Stream]]) -> None:
    for each in kept:
        with anyio.CancelScope(shield=True):
            await each.stream.aclose()


async def _read_message(stream: Stream, reader: LengthPrefixedReader | None = None) -> bytes | None:
    """One framed message; None on a clean EOF between messages."""
    reader = reader or LengthPrefixedReader(limits.KAD_MAX_MESSAGE)
    while True:
        body = reader.next_message()
        if body is not None:
            return body
        try:
            reader.receive_data(await stream.receive())
        except anyio.EndOfStream:
            if reader.buffered:
                raise KadMessageError("stream ended inside a message") from None
            return None


async def _read_request(stream: Stream, reader: LengthPrefixedReader) -> bytes | None:
    """The next request: up to a minute for it to begin (go's idle timeout), then
    `KAD_READ_TIMEOUT` for the rest, so a peer cannot hold a buffer open by trickling.
    The deadlines are the stream's own, so a request already here costs no timer."""
    deadline = anyio.current_time() + limits.KAD_IDLE_TIMEOUT
    while True:
        body = reader.next_message()
        if body is not None:
            return body
        if reader.buffered and deadline > (rest := anyio.current_time() + limits.KAD_READ_TIMEOUT):
            deadline = rest  # the request began: the rest of it comes soon or never
        try:
            reader.receive_data(await stream.receive(deadline=deadline))
        except anyio.EndOfStream:
            if reader.buffered:
                raise KadMessageError("stream ended inside a message") from None
            return None


# Answered from the routing table alone, never waiting on IO: a deadline could not cut them
# short (cancellation needs an await) and would only cost a timer per request.
_ANSWERED_FROM_MEMORY = frozenset({MessageType.FIND_NODE, MessageType.PING})


def make_server_handler(
    handler: KadHandler, *, metrics: ServerMetrics | None = None
) -> Callable[[Stream], Awaitable[None]]:
    """The stream handler the host runs for the DHT protocol in server mode."""

    def decoded(body: bytes, sender: PeerId) -> KadMessage:
        request = decode_message(body)
        if request.dropped_peers:
            log.info("%s sent %d unusable peer entries", sender, request.dropped_peers)
            if metrics is not None:
                metrics.bad_message("bad_peer_entry", request.dropped_peers)
        if request.addrs_over_cap and metrics is not None:
            metrics.peer_addrs_dropped("cap", request.addrs_over_cap)
        return request

    def counted(kind: MessageType, result: str, n: int = 1) -> None:
        if metrics is not None:
            for _ in range(n):
                metrics.request_received(kind.name, result)

    async def serve(stream: Stream) -> None:
        sender = stream.remote_peer
        reader = LengthPrefixedReader(limits.KAD_MAX_MESSAGE)
        pending: KadMessage | None = None  # read ahead past a run of ADD_PROVIDERs
        serving: tuple[MessageType, int] | None = None  # requests being handled or answered
        try:
            while True:
                serving = None
                if pending is None:
                    body = await _read_request(stream, reader)
                    if body is None:
                        await stream.aclose()
                        return
                    request = decoded(body, sender)
                else:
                    request, pending = pending, None
                batch = [request]
                # ADD_PROVIDERs already here (a republishing peer sends hundreds on one
                # stream) go to the store as one batch instead of one write each.
                while (
                    request.type is MessageType.ADD_PROVIDER
                    and len(batch) < limits.KAD_PIPELINED_ADD_PROVIDERS
                    and (more := reader.next_message()) is not None
                ):
                    following = decoded(more, sender)
                    if following.type is not MessageType.ADD_PROVIDER:
                        pending = following
                        break
                    batch.append(following)
                serving = (request.type, len(batch))
                try:
                    if request.type is MessageType.ADD_PROVIDER:
                        with anyio.fail_after(limits.KAD_HANDLE_TIMEOUT):
                            await handler.add_providers(sender, batch)
                        reply = None
                    elif request.type in _ANSWERED_FROM_MEMORY:
                        reply = await handler.handle(sender, request)
                    else:
                        with anyio.fail_after(limits.KAD_HANDLE_TIMEOUT):
                            reply = await handler.handle(sender, request)
                except (KadRequestRejected, RequestRefused):
                    counted(request.type, "rejected")
                    raise
                except StoreError as exc:
                    # The disk is full or read-only: this request is refused, the stream and
                    # the connection go on (reads are still served).
                    log.warning("%s from %s not stored: %s", request.type.name, sender, exc)
                    counted(request.type, "rejected", len(batch))
                    if metrics is not None:
                        metrics.resource_refused("store", "writes")
                    if request.type is MessageType.ADD_PROVIDER:
                        continue  # never answered anyway
                    raise
                counted(request.type, "ok", len(batch))
                if reply is not None:
                    await stream.send(
                        frame(encode_message(reply)),
                        deadline=anyio.current_time() + limits.WRITE_TIMEOUT,
                    )
        except RequestRefused as exc:
            log.debug("refusing DHT request from %s: %s", sender, exc)
            await stream.reset()
        except (KadMessageError, MessageTooLarge, KadRequestRejected) as exc:
            reason = (
                "too_large"
                if isinstance(exc, MessageTooLarge)
                else "rejected"
                if isinstance(exc, KadRequestRejected)
                else "undecodable"
            )
            log.info("refusing DHT request from %s: %s", sender, exc)
            if metrics is not None:
                metrics.bad_message(reason)
            await stream.reset()
        except TimeoutError:
            # The handle deadline or the reply's write deadline (a reader that stalls between
            # requests is the stream's own business, not counted).
            if serving is not None:
                kind, n = serving
                log.debug("%d %s from %s passed the deadline", n, kind.name, sender)
                counted(kind, "timeout", n)
            await stream.reset()
        except (
            ConnectionClosed,
            StreamReset,
            DialError,
            ResourceLimitExceeded,
            RemoteProtocolError,
            StoreError,
        ):
            await stream.reset()

    return serve
