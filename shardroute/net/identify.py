"""The identify service: tell peers who we are, learn who they are, push our changes.

Every connection is identified once it opens; what a peer says is checked against the
connection's key and stored in the peerstore, and then published as a `PeerIdentified` event
to every subscriber (a bounded stream each: a slow subscriber slows identify, never loses it).
When our protocols change, connected peers get an identify push.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio
import anyio.lowlevel
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from multiaddr import Multiaddr

from shardroute import limits
from shardroute.addrs import multiaddr_from_bytes, multiaddr_to_bytes, sanitize_peer_addrs
from shardroute.errors import InvalidKey, MessageTooLarge, RemoteProtocolError, ShardrouteError
from shardroute.identity.keys import PublicKey
from shardroute.identity.peer_id import PeerId
from shardroute.net.addresses import scope_of
from shardroute.net.muxer import MuxedConnection, MuxedStream
from shardroute.protocol.identify import (
    IDENTIFY_PROTOCOL,
    IDENTIFY_PUSH_PROTOCOL,
    PROTOCOL_VERSION,
    IdentifyError,
    IdentifyInfo,
    decode_identify,
    encode_identify,
)
from shardroute.protocol.varint import LengthPrefixedReader, frame

if TYPE_CHECKING:
    from shardroute.net.host import Host

log = logging.getLogger(__name__)

# Events buffered per subscriber before identify waits for it (our choice).
EVENT_BUFFER = 256
_ALL_FIELDS = frozenset(
    {
        "public_key",
        "listen_addrs",
        "observed_addr",
        "protocols",
        "agent_version",
        "protocol_version",
    }
)


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerIdentified:
    """A peer told us who it is (`pushed`: by identify push). Protocols and addresses are the
    peerstore's after the message was applied; `remote_addr` is where its connection comes
    from, which the peer cannot choose."""

    peer: PeerId
    protocols: frozenset[str]
    listen_addrs: tuple[Multiaddr, ...]
    remote_addr: Multiaddr
    pushed: bool


class IdentifyService:
    def __init__(self, host: Host) -> None:
        self.host = host
        self._identified: dict[MuxedConnection, anyio.Event] = {}
        self._subscribers: list[MemoryObjectSendStream[PeerIdentified]] = []
        self._push_pending = False

    def handlers(self) -> dict[str, Callable[[MuxedStream], Awaitable[None]]]:
        """The stream handlers the host installs for identify and identify push."""
        return {IDENTIFY_PROTOCOL: self._answer, IDENTIFY_PUSH_PROTOCOL: self._receive_push}

    def subscribe(self) -> MemoryObjectReceiveStream[PeerIdentified]:
        send, receive = anyio.create_memory_object_stream[PeerIdentified](EVENT_BUFFER)
        self._subscribers.append(send)
        return receive

    async def _publish(self, event: PeerIdentified) -> None:
        for send in list(self._subscribers):
            try:
                await send.send(event)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                self._subscribers.remove(send)

    def close(self) -> None:
        for send in self._subscribers:
            send.close()
        self._subscribers.clear()

    # -- what we say -------------------------------------------------------------------------

    def describe_us(self, conn: MuxedConnection) -> IdentifyInfo:
        host = self.host
        return IdentifyInfo(
            public_key=host.identity.public_key.to_protobuf(),
            listen_addrs=tuple(
                multiaddr_to_bytes(a)
                for a in host.addresses.advertised(
                    host.clock.monotonic(), scope_of(conn.remote_addr)
                )
            ),
            observed_addr=multiaddr_to_bytes(conn.remote_addr),
            protocols=tuple(host.protocols()),
            agent_version=host.agent_version,
            protocol_version=PROTOCOL_VERSION,
            present=_ALL_FIELDS,
        )

    async def _send(self, stream: MuxedStream) -> None:
        """One message, then FIN so the reader sees EOF."""
        with anyio.fail_after(limits.IDENTIFY_TIMEOUT):
            await stream.send(frame(encode_identify(self.describe_us(stream.conn))))
            await stream.aclose()

    async def _answer(self, stream: MuxedStream) -> None:
        await self._send(stream)

    # -- what they say -----------------------------------------------------------------------

    async def _read(self, stream: MuxedStream) -> IdentifyInfo:
        """Read messages until EOF and merge them, as go does (at most 10, 8 KiB each)."""
        reader = LengthPrefixedReader(limits.IDENTIFY_MAX_MESSAGE)
        merged = IdentifyInfo()
        count = 0
        with anyio.fail_after(limits.IDENTIFY_TIMEOUT):
            while True:
                try:
                    reader.receive_data(await stream.receive())
                except anyio.EndOfStream:
                    if reader.buffered:
                        raise IdentifyError("identify stream ended inside a message") from None
                    break
                while (body := reader.next_message()) is not None:
                    count += 1
                    if count > limits.IDENTIFY_MAX_MESSAGES:
                        raise MessageTooLarge("more than 10 identify messages")
                    merged = decode_identify(body).merged_over(merged)
        await stream.aclose()
        return merged

    def _apply(self, conn: MuxedConnection, info: IdentifyInfo) -> None:
        """Store what the peer told us; refuse a message whose key is not the connection's."""
        host, peer = self.host, conn.remote_peer
        if info.public_key is not None:
            try:
                key = PublicKey.from_protobuf(info.public_key)
            except InvalidKey as exc:
                raise IdentifyError(f"identify carries an unusable public key: {exc}") from exc
            if not peer.matches_public_key(key):
                raise IdentifyError("identify public key does not match the connection's peer")
            host.peerstore.set_public_key(peer, key)
        now = host.clock.monotonic()
        if "listen_addrs" in info.present:
            addrs = host.acceptable_from(peer, sanitize_peer_addrs(peer, info.listen_addrs))
            if len(addrs) > limits.KAD_MAX_ADDRS_PER_PEER:
                if host.metrics is not None:
                    host.metrics.peer_addrs_dropped(
                        "cap", len(addrs) - limits.KAD_MAX_ADDRS_PER_PEER
                    )
                addrs = addrs[: limits.KAD_MAX_ADDRS_PER_PEER]
            host.peerstore.add_addrs(peer, addrs, host.connected_addr_ttl, now)
        if "protocols" in info.present:
            host.peerstore.set_protocols(peer, info.protocols)
        if "agent_version" in info.present or "protocol_version" in info.present:
            host.peerstore.set_agent(peer, info.agent_version, info.protocol_version)
        if info.observed_addr is not None:
            try:
                host.note_observed_addr(conn, multiaddr_from_bytes(info.observed_addr))
            except ValueError:
                pass

    def _event(self, conn: MuxedConnection, pushed: bool) -> PeerIdentified:
        host, peer = self.host, conn.remote_peer
        return PeerIdentified(
            peer=peer,
            protocols=host.peerstore.protocols(peer),
            listen_addrs=tuple(host.peerstore.addrs(peer, host.clock.monotonic())),
            remote_addr=conn.remote_addr,
            pushed=pushed,
        )

    def track(self, conn: MuxedConnection) -> None:
        """A new connection: `wait_identified` waits for it from now on."""
        self._identified[conn] = anyio.Event()

    async def identify(self, conn: MuxedConnection) -> None:
        """Identify a new connection's peer (run once per connection, after `track`)."""
        done = self._identified.setdefault(conn, anyio.Event())
        stream: MuxedStream | None = None
        try:
            stream = await self.host.open_stream_on(conn, [IDENTIFY_PROTOCOL])
            info = await self._read(stream)
            self._apply(conn, info)
        except (ShardrouteError, TimeoutError) as exc:
            log.info("identify with %s failed: %s", conn.remote_peer, exc)
            if stream is not None:  # or it holds a stream slot for the connection's life
                await stream.reset()
            return
        finally:
            done.set()
        await self._publish(self._event(conn, pushed=False))

    def forget(self, conn: MuxedConnection) -> None:
        self._identified.pop(conn, None)

    async def wait_identified(self, conn: MuxedConnection) -> None:
        """Until identify of `conn` ended (successfully or not)."""
        event = self._identified.get(conn)
        if event is not None:
            await event.wait()

    async def _receive_push(self, stream: MuxedStream) -> None:
        try:
            info = await self._read(stream)
            self._apply(stream.conn, info)
        except (RemoteProtocolError, TimeoutError) as exc:
            log.info("ignoring identify push from %s: %s", stream.remote_peer, exc)
            await stream.reset()
            return
        await self._publish(self._event(stream.conn, pushed=True))

    # -- pushes ------------------------------------------------------------------------------

    def schedule_push(self) -> None:
        """Tell connected peers our protocols changed, once per burst of changes."""
        if self._push_pending or not self.host.connected_peers():
            return
        if self.host.spawn(self._push_all):
            self._push_pending = True

    async def _push_all(self) -> None:
        await anyio.lowlevel.checkpoint()  # let a burst of handler changes settle into one push
        self._push_pending = False
        for peer in self.host.connected_peers():
            conn = self.host.connection(peer)
            if conn is not None:
                self.host.spawn(self._push_one, conn)

    async def _push_one(self, conn: MuxedConnection) -> None:
        try:
            with anyio.fail_after(limits.IDENTIFY_TIMEOUT):
                stream = await self.host.open_stream_on(conn, [IDENTIFY_PUSH_PROTOCOL])
                await self._send(stream)
        except (ShardrouteError, TimeoutError) as exc:
            log.debug("identify push to %s failed: %s", conn.remote_peer, exc)
