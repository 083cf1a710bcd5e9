"""The DHT's request primitive: one request or one batch of writes to one peer, under a
deadline, logged and counted. Failures come back as values (None, a missing peer), never as
exceptions: a lookup treats a failed peer as one more answer."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Protocol

import anyio

from shardroute.errors import KadRequestFailed
from shardroute.identity.peer_id import PeerId
from shardroute.kad.messages import KadMessage, MessageType, PeerInfo
from shardroute.kad.transport import KadTransport

log = logging.getLogger(__name__)


class RequestMetrics(Protocol):
    def request_finished(self, message_type: str, *, ok: bool) -> None: ...


def describe(exc: Exception) -> str:
    return str(exc) or f"{type(exc).__name__} (timed out)"


class RequestClient:
    def __init__(self, transport: KadTransport, metrics: RequestMetrics | None = None) -> None:
        self.transport = transport
        self.metrics = metrics

    def _count(self, message_type: MessageType, ok: bool) -> None:
        if self.metrics is not None:
            self.metrics.request_finished(message_type.name, ok=ok)

    async def request(
        self,
        peer: PeerInfo,
        message: KadMessage,
        limit: float,
    ) -> KadMessage | None:
        """One request, given `limit` seconds (the transport keeps the deadline); None when
        it failed."""
        reply: KadMessage | None = None
        try:
            reply = await self.transport.request(peer, message, timeout=limit)
        except (KadRequestFailed, TimeoutError) as exc:
            log.debug(
                "%s %s to %s failed: %s",
                message.type.name,
                message.key.hex(),
                peer.peer_id,
                describe(exc),
            )
        self._count(message.type, reply is not None)
        return reply

    async def send_batches(
        self,
        batches: Mapping[PeerId, Sequence[KadMessage]],
        infos: Mapping[PeerId, PeerInfo],
        limit: float,
    ) -> set[PeerId]:
        """Write each peer's messages on one stream, all peers at once; the peers that took
        them. `infos` says where to dial each peer."""
        sent: set[PeerId] = set()

        async def one(peer: PeerId, messages: Sequence[KadMessage]) -> None:
            try:
                await self.transport.send(infos[peer], messages, timeout=limit)
            except (KadRequestFailed, TimeoutError) as exc:
                log.debug("%d messages to %s failed: %s", len(messages), peer, describe(exc))
                ok = False
            else:
                ok = True
                sent.add(peer)
            for message in messages:
                self._count(message.type, ok)

        async with anyio.create_task_group() as tg:
            for peer, messages in batches.items():
                tg.start_soon(one, peer, messages)
        return sent

    async def probe_liveness(self, peer: PeerInfo, limit: float) -> bool:
        """Is `peer` alive and a DHT server? Asked with FIND_NODE for our own ID: PING is
        deprecated (answer it, never send it) and go and js probe this way."""
        message = KadMessage(type=MessageType.FIND_NODE, key=self.transport.self_id.raw)
        reply = await self.request(peer, message, limit)
        return reply is not None and reply.type is MessageType.FIND_NODE
