"""Kademlia over libp2p streams: the client side of `KadNetwork` and the server stream loop.

Requests are uvarint-framed protobufs. We open one stream per request and half-close it when
done (as js does); the server loop answers several requests per inbound stream, in order, as go
expects. ADD_PROVIDER is never answered and no answer is ever read for it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence

import anyio
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
    ResourceLimitExceeded,
    ShardrouteError,
    StreamReset,
)
from shardroute.kad.handler import KadHandler
from shardroute.kad.messages import KadMessage, PeerInfo, decode_message, encode_message
from shardroute.net.host import Host
from shardroute.net.muxer import MuxedStream
from shardroute.obs.metrics import Metrics
from shardroute.protocol.varint import LengthPrefixedReader, frame

log = logging.getLogger(__name__)

# go resets an inbound DHT stream after a minute without a request.
INBOUND_IDLE_TIMEOUT = 60.0


class HostKadNetwork:
    """`KadNetwork` over a real libp2p host."""

    def __init__(self, host: Host, protocol_id: str) -> None:
        self.host = host
        self.protocol_id = protocol_id
        self.self_id = host.peer_id

    def self_addrs(self) -> list[Multiaddr]:
        return self.host.advertised_addrs()

    async def _open(self, peer: PeerInfo) -> MuxedStream:
        try:
            return await self.host.new_stream(peer.peer_id, [self.protocol_id], addrs=peer.addrs)
        except (ShardrouteError, OSError) as exc:
            raise KadRequestFailed(
                f"{peer.peer_id}: cannot open a {self.protocol_id} stream: {exc}"
            ) from exc

    async def request(self, peer: PeerInfo, message: KadMessage, *, timeout: float) -> KadMessage:  # noqa: ASYNC109
        stream: MuxedStream | None = None
        try:
            with anyio.fail_after(timeout):
                stream = await self._open(peer)
                await stream.send(frame(encode_message(message)))
                await stream.send_eof()
                body = await _read_message(stream)
                if body is None:
                    raise KadRequestFailed(f"{peer.peer_id} closed the stream without answering")
                reply = decode_message(body)
            await stream.aclose()
            return reply
        except TimeoutError as exc:
            raise KadRequestFailed(f"{peer.peer_id}: no answer within {timeout} s") from exc
        except KadRequestFailed:
            raise
        except (ShardrouteError, OSError, anyio.EndOfStream) as exc:
            raise KadRequestFailed(f"{peer.peer_id}: {type(exc).__name__}: {exc}") from exc
        finally:
            if stream is not None and not stream.finished_locally:
                with anyio.CancelScope(shield=True):
                    await stream.reset()

    async def send(self, peer: PeerInfo, messages: Sequence[KadMessage], *, timeout: float) -> None:  # noqa: ASYNC109
        try:
            with anyio.fail_after(timeout):
                stream = await self._open(peer)
                try:
                    await stream.send(b"".join(frame(encode_message(m)) for m in messages))
                    await stream.aclose()
                except BaseException:
                    with anyio.CancelScope(shield=True):
                        await stream.reset()
                    raise
        except TimeoutError as exc:
            raise KadRequestFailed(f"{peer.peer_id}: send not done within {timeout} s") from exc
        except KadRequestFailed:
            raise
        except (ShardrouteError, OSError) as exc:
            raise KadRequestFailed(f"{peer.peer_id}: {type(exc).__name__}: {exc}") from exc


async def _read_message(
    stream: MuxedStream, reader: LengthPrefixedReader | None = None
) -> bytes | None:
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


def make_server_handler(
    handler: KadHandler, *, metrics: Metrics | None = None
) -> Callable[[MuxedStream], Awaitable[None]]:
    """The stream handler the host runs for the DHT protocol in server mode."""

    async def serve(stream: MuxedStream) -> None:
        sender = stream.remote_peer
        reader = LengthPrefixedReader(limits.KAD_MAX_MESSAGE)
        try:
            while True:
                with anyio.fail_after(INBOUND_IDLE_TIMEOUT):
                    body = await _read_message(stream, reader)
                if body is None:
                    await stream.aclose()
                    return
                request = decode_message(body)
                if request.dropped_peers:
                    log.info("%s sent %d unusable peer entries", sender, request.dropped_peers)
                    if metrics is not None:
                        metrics.bad_messages_total.labels("bad_peer_entry").inc(
                            request.dropped_peers
                        )
                try:
                    reply = await handler.handle(sender, request)
                except KadRequestRejected:
                    if metrics is not None:
                        metrics.dht_requests_received_total.labels(
                            request.type.name, "rejected"
                        ).inc()
                    raise
                if metrics is not None:
                    metrics.dht_requests_received_total.labels(request.type.name, "ok").inc()
                if reply is not None:
                    await stream.send(frame(encode_message(reply)))
        except (KadMessageError, MessageTooLarge, KadRequestRejected) as exc:
            reason = {
                KadMessageError: "undecodable",
                MessageTooLarge: "too_large",
                KadRequestRejected: "rejected",
            }[type(exc)]
            log.info("refusing DHT request from %s: %s", sender, exc)
            if metrics is not None:
                metrics.bad_messages_total.labels(reason).inc()
            await stream.reset()
        except TimeoutError:
            await stream.reset()
        except (
            ConnectionClosed,
            StreamReset,
            DialError,
            ResourceLimitExceeded,
            RemoteProtocolError,
        ):
            await stream.reset()

    return serve
