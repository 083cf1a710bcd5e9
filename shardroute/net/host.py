"""The host: a libp2p node's connection side. It listens and dials (TCP, Noise, Yamux), keeps
one connection per peer, routes inbound streams to protocol handlers, and runs identify and
ping. Its parts: `transport` (TCP), `upgrader`, `dialer`, `connections` (the registry),
`resources` (budgets), `connection_manager` (water marks, idle connections), `identify` (the
service and its events), `peerstore`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import anyio
import anyio.abc
from anyio.streams.memory import MemoryObjectReceiveStream
from multiaddr import Multiaddr

from shardroute import __version__, limits
from shardroute.addrs import ip_of, split_p2p, tcp_endpoint
from shardroute.clock import Clock, SystemClock
from shardroute.errors import (
    ConnectionClosed,
    DialError,
    DialPeerMismatch,
    MultistreamError,
    PeerIdMismatch,
    RemoteProtocolError,
    ResourceLimitExceeded,
    ShardrouteError,
    StreamReset,
)
from shardroute.identity.keys import Ed25519PrivateKey
from shardroute.identity.peer_id import PeerId
from shardroute.net.addresses import LocalAddresses, Scope, scope_of, shareable
from shardroute.net.connection_manager import ConnectionManager, ConnectionManagerLimits
from shardroute.net.connections import ConnectionRegistry
from shardroute.net.dialer import Dialer, Upgraded
from shardroute.net.identify import IdentifyService, PeerIdentified
from shardroute.net.io import TRANSPORT_ERRORS
from shardroute.net.muxer import Direction, MuxedConnection, MuxedStream
from shardroute.net.negotiate import handle_protocol, select_protocol
from shardroute.net.peerstore import CONNECTED_ADDR_TTL, RECENTLY_CONNECTED_ADDR_TTL, Peerstore
from shardroute.net.ping import PING_PROTOCOL, handle_ping, ping_round_trips
from shardroute.net.resources import Reservation, ResourceLimits, ResourceManager
from shardroute.net.secure import SecureChannel
from shardroute.net.transport import TcpStream, listen_tcp, remote_multiaddr
from shardroute.net.upgrader import upgrade

log = logging.getLogger(__name__)

# What may end an inbound upgrade: it ends that connection only.
UPGRADE_ERRORS: tuple[type[BaseException], ...] = (ShardrouteError, TimeoutError, *TRANSPORT_ERRORS)
# A connection that lost the simultaneous-dial tie-break gets this long to finish its streams.
DUPLICATE_CONNECTION_GRACE = 5.0

StreamHandler = Callable[[MuxedStream], Awaitable[None]]


@dataclass(slots=True)
class _PendingDial:
    """A dial in progress; callers that want the same peer wait for it and share its end."""

    done: anyio.Event = field(default_factory=anyio.Event)
    error: BaseException | None = None


class NetMetrics(Protocol):
    def peer_addrs_dropped(self, reason: str, count: int) -> None: ...

    def handshake_failed(self, reason: str) -> None: ...

    def resource_refused(self, scope: str, resource: str) -> None: ...


def handshake_failure_reason(exc: BaseException) -> str:
    """What kind of upgrade failure `exc` is, for the handshake-failures metric."""
    if isinstance(exc, (PeerIdMismatch, DialPeerMismatch)):
        return "peer_id_mismatch"
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, RemoteProtocolError):
        return "protocol"
    return "closed"


@dataclass(frozen=True, slots=True)
class HostLimits:
    resources: ResourceLimits = field(default_factory=ResourceLimits)
    connection_manager: ConnectionManagerLimits = field(default_factory=ConnectionManagerLimits)
    max_streams_per_connection: int = limits.YAMUX_MAX_STREAMS
    dial_timeout: float = limits.DIAL_TIMEOUT
    upgrade_timeout: float = limits.UPGRADE_TIMEOUT
    negotiation_timeout: float = limits.STREAM_NEGOTIATION_TIMEOUT
    write_timeout: float = limits.WRITE_TIMEOUT


class PeerMemory:
    """One peer's buffer memory in the resource manager, as its connection accounts it."""

    __slots__ = ("_peer", "_resources")

    def __init__(self, resources: ResourceManager, peer: PeerId) -> None:
        self._resources = resources
        self._peer = peer

    def grow(self, n: int) -> bool:
        return self._resources.grow_memory(self._peer, n)

    def shrink(self, n: int) -> None:
        self._resources.shrink_memory(self._peer, n)


class Host:
    def __init__(
        self,
        identity: Ed25519PrivateKey,
        *,
        listen_addrs: Sequence[Multiaddr] = (),
        clock: Clock | None = None,
        host_limits: HostLimits | None = None,
        agent_version: str = f"shardroute/{__version__}",
        addresses: LocalAddresses | None = None,
        metrics: NetMetrics | None = None,
    ) -> None:
        self.identity = identity
        self.peer_id = PeerId.from_public_key(identity.public_key)
        self.clock: Clock = clock or SystemClock()
        self.limits = host_limits or HostLimits()
        self.agent_version = agent_version
        self.peerstore = Peerstore()
        self.connected_addr_ttl = CONNECTED_ADDR_TTL
        self.connections = ConnectionRegistry(self.peer_id)
        self._requested_listen = list(listen_addrs)
        self.addresses = addresses or LocalAddresses()
        self.dialer = Dialer(
            identity,
            dial_timeout=self.limits.dial_timeout,
            upgrade_timeout=self.limits.upgrade_timeout,
            own_scopes=lambda: {scope_of(a) for a in self.interface_listen_addrs()},
            on_handshake_failure=self._handshake_failed,
        )
        self.metrics = metrics
        self.resources = ResourceManager(self.limits.resources, metrics=metrics)
        self.connection_manager = ConnectionManager(
            self.connections,
            SystemClock(),  # real time: it manages sockets and memory, whatever the node's clock
            lambda peer: self.resources.protected(peer),
            self.limits.connection_manager,
        )
        self._listen_scopes: list[anyio.CancelScope] = []
        self._handlers: dict[str, StreamHandler] = {}
        self._pending_dials: dict[PeerId, _PendingDial] = {}
        self._tg: anyio.abc.TaskGroup | None = None
        self.identify = IdentifyService(self)
        self._handlers.update(self.identify.handlers())
        self._handlers[PING_PROTOCOL] = handle_ping

    # ---------------------------------------------------------------- lifecycle
    async def __aenter__(self) -> Host:
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        try:
            for addr in self._requested_listen:
                self.addresses.listen += await self._tg.start(self._listen, addr)
            self._tg.start_soon(self.connection_manager.run)
        except BaseException:
            await self._shutdown()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._shutdown()

    async def _shutdown(self) -> None:
        assert self._tg is not None
        tg, self._tg = self._tg, None
        with anyio.CancelScope(shield=True):
            for scope in self._listen_scopes:
                scope.cancel()
            for conn in self.connections.all():
                await conn.close("host shutting down")
        self.identify.close()
        tg.cancel_scope.cancel()
        await tg.__aexit__(None, None, None)

    def spawn(self, fn: Callable[..., Coroutine[Any, Any, object]], *args: object) -> bool:
        """Run `fn` in the host's task group; False when the host is not running."""
        if self._tg is None:
            return False
        self._tg.start_soon(fn, *args)
        return True

    # ---------------------------------------------------------------- addresses
    @property
    def listen_addrs(self) -> list[Multiaddr]:
        """The addresses we listen on, ports resolved (wildcards as given)."""
        return list(self.addresses.listen)

    def interface_listen_addrs(self) -> list[Multiaddr]:
        """The listen addresses with wildcards expanded to every interface address."""
        return self.addresses.interface_listen_addrs()

    def peer_scope(self, peer: PeerId) -> Scope:
        """Where `peer` sits for us: the scope of its connection's remote address, or of the
        nearest address we know for it when not connected (public if we know none)."""
        conn = self.connections.get(peer)
        if conn is not None:
            return conn.remote_scope
        known = [scope_of(a) for a in self.peer_addrs(peer)]
        return min(known, default=Scope.PUBLIC)

    def advertised_addrs(self, to: PeerId | None = None) -> list[Multiaddr]:
        """Our dialable addresses (never 0.0.0.0); with `to`, only those that peer can use."""
        now = self.clock.monotonic()
        return self.addresses.advertised(now, None if to is None else self.peer_scope(to))

    def shareable_to(self, peer: PeerId, addrs: Sequence[Multiaddr]) -> tuple[Multiaddr, ...]:
        """Of `addrs` (ours or others'), those `peer` can use."""
        return shareable(addrs, self.peer_scope(peer), share_private=self.addresses.share_private)

    def acceptable_from(self, peer: PeerId, addrs: Sequence[Multiaddr]) -> tuple[Multiaddr, ...]:
        """Of the addresses `peer` told us (its own or others'), those worth keeping: what it
        could not have reached itself (a loopback address from another host, a private one
        from a public peer) is dropped and counted."""
        kept = self.shareable_to(peer, addrs)
        if len(kept) < len(addrs) and self.metrics is not None:
            self.metrics.peer_addrs_dropped("scope", len(addrs) - len(kept))
        return kept

    def remote_addr(self, peer: PeerId) -> Multiaddr | None:
        """Where our connection to `peer` really comes from (not what it claims)."""
        conn = self.connections.get(peer)
        return None if conn is None else conn.remote_addr

    def note_observed_addr(self, conn: MuxedConnection, observed: Multiaddr) -> None:
        """`conn`'s peer says it sees us at `observed`; connected peers hear (identify push)
        when that confirms an address of ours or lets one lapse."""
        now = self.clock.monotonic()
        before = self.addresses.observed.confirmed(now)
        self.addresses.observed.record(
            observed,
            conn.remote_addr,
            inbound=conn.direction is Direction.INBOUND,
            listen_ports=self.addresses.listen_ports(),
            now=now,
        )
        if self.addresses.observed.confirmed(now) != before:
            log.info("addresses others see us at: %s", self.addresses.observed.confirmed(now))
            self.identify.schedule_push()

    def peer_addrs(self, peer: PeerId) -> Sequence[Multiaddr]:
        """Where `peer` can be dialed, as far as the peerstore knows now."""
        return self.peerstore.addrs(peer, self.clock.monotonic())

    # ---------------------------------------------------------------- handlers and events
    def set_stream_handler(self, protocol: str, handler: StreamHandler) -> None:
        self._handlers[protocol] = handler
        self.identify.schedule_push()

    def remove_stream_handler(self, protocol: str) -> None:
        if self._handlers.pop(protocol, None) is not None:
            self.identify.schedule_push()

    def protocols(self) -> list[str]:
        return sorted(self._handlers)

    def subscribe_identified(self) -> MemoryObjectReceiveStream[PeerIdentified]:
        """Every identify (and push) result from now on, on a bounded stream."""
        return self.identify.subscribe()

    # ---------------------------------------------------------------- listening
    async def _listen(
        self, addr: Multiaddr, *, task_status: anyio.abc.TaskStatus[list[Multiaddr]]
    ) -> None:
        assert self._tg is not None
        with anyio.CancelScope() as scope:
            self._listen_scopes.append(scope)
            await listen_tcp(addr, self._accept, self._tg, task_status=task_status)

    async def _accept(self, raw: TcpStream) -> None:
        try:
            remote_addr = remote_multiaddr(raw)
        except OSError:
            # Reset before we asked for its peer address (getpeername fails): nothing to serve,
            # and raising here would end the host's task group.
            log.debug("inbound connection closed before it could be served")
            with anyio.CancelScope(shield=True):
                await raw.aclose()
            return
        ip = ip_of(remote_addr)
        try:
            pending = self.resources.begin_upgrade(ip)
        except ResourceLimitExceeded as exc:
            log.debug("refusing inbound connection from %s: %s", remote_addr, exc)
            with anyio.CancelScope(shield=True):
                await raw.aclose()
            return
        try:
            with anyio.fail_after(self.limits.upgrade_timeout):
                channel, plaintext = await upgrade(raw, self.identity, initiator=False)
        except UPGRADE_ERRORS as exc:
            log.info("inbound connection from %s failed to upgrade: %r", remote_addr, exc)
            if self.metrics is not None:
                self.metrics.handshake_failed(handshake_failure_reason(exc))
            with anyio.CancelScope(shield=True):
                await raw.aclose()
            return
        finally:
            pending.release()
        try:
            held = self.resources.open_connection(channel.remote_peer, inbound=True, ip=ip)
        except ResourceLimitExceeded as exc:
            log.info("refusing inbound connection from %s: %s", remote_addr, exc)
            with anyio.move_on_after(1, shield=True):
                await channel.aclose()
            return
        conn = self._make_connection(channel, Direction.INBOUND, remote_addr, plaintext)
        await self._serve_connection(conn, held)

    # ---------------------------------------------------------------- dialing
    async def dial(self, addr: Multiaddr) -> MuxedConnection:
        """Dial a multiaddr; with a /p2p/ suffix the peer must authenticate as that ID."""
        transport, peer = split_p2p(addr)
        if peer is None:
            self._check_can_dial()
            return await self._establish(await self.dialer.dial_addr(transport, None))
        return await self.connect(peer, [transport])

    async def connect(self, peer: PeerId, addrs: Sequence[Multiaddr] = ()) -> MuxedConnection:
        """The live connection to `peer`, dialing it (its known or given addresses) if needed.

        Concurrent calls for one peer share a single dial.
        """
        if peer == self.peer_id:
            raise DialError("refusing to dial ourselves")
        while True:
            existing = self.connections.usable(peer)
            if existing is not None:
                return existing
            pending = self._pending_dials.get(peer)
            if pending is None:
                break
            await pending.done.wait()
            if pending.error is not None and self.connections.get(peer) is None:
                raise DialError(str(pending.error)) from pending.error
        pending = self._pending_dials[peer] = _PendingDial()
        try:
            now = self.clock.monotonic()
            if addrs:
                self.peerstore.add_addrs(peer, addrs, RECENTLY_CONNECTED_ADDR_TTL, now)
            candidates = [
                a
                for a in dict.fromkeys([*addrs, *self.peerstore.addrs(peer, now)])
                if tcp_endpoint(a) is not None and not self.addresses.is_own(a)
            ]
            self._check_can_dial()
            return await self._establish(await self.dialer.dial_peer(peer, candidates))
        except BaseException as exc:
            pending.error = exc
            raise
        finally:
            del self._pending_dials[peer]
            pending.done.set()

    def _handshake_failed(self, exc: BaseException) -> None:
        if self.metrics is not None:
            self.metrics.handshake_failed(handshake_failure_reason(exc))

    def _check_can_dial(self) -> None:
        if self._tg is None:
            raise DialError("host is not running")
        self.resources.can_dial()

    async def _establish(self, dialed: Upgraded) -> MuxedConnection:
        """Serve a dialed connection; returns the peer's connection once it is registered."""
        if self._tg is None:
            with anyio.move_on_after(1, shield=True):
                await dialed.channel.aclose()
            raise DialError("host is not running")
        try:
            held = self.resources.open_connection(
                dialed.channel.remote_peer, inbound=False, ip=ip_of(dialed.addr)
            )
        except ResourceLimitExceeded:
            with anyio.move_on_after(1, shield=True):
                await dialed.channel.aclose()
            raise
        conn = self._make_connection(
            dialed.channel, Direction.OUTBOUND, dialed.addr, dialed.plaintext
        )
        started = anyio.Event()
        self._tg.start_soon(self._serve_connection, conn, held, started)
        await started.wait()
        now = self.clock.monotonic()
        self.peerstore.add_addrs(conn.remote_peer, [dialed.addr], self.connected_addr_ttl, now)
        return self.connections.get(conn.remote_peer) or conn

    # ---------------------------------------------------------------- connections
    def _make_connection(
        self, channel: SecureChannel, direction: Direction, remote_addr: Multiaddr, plaintext: bytes
    ) -> MuxedConnection:
        conn: MuxedConnection
        peer = channel.remote_peer

        def on_stream(stream: MuxedStream) -> None:
            try:
                stream.hold(self.resources.open_stream(peer, inbound=True))
            except ResourceLimitExceeded:
                stream.refuse()
                return
            conn.spawn(self._handle_stream, stream)

        conn = MuxedConnection(
            channel,
            direction=direction,
            remote_addr=remote_addr,
            initial_plaintext=plaintext,
            on_stream=on_stream,
            max_streams=self.limits.max_streams_per_connection,
            memory=PeerMemory(self.resources, peer),
            write_timeout=self.limits.write_timeout,
        )
        return conn

    async def _serve_connection(
        self, conn: MuxedConnection, held: Reservation, started: anyio.Event | None = None
    ) -> None:
        peer = conn.remote_peer
        dropped = self.connections.add(conn)
        if dropped is not None:
            self.spawn(self._close_later, dropped)
        self.peerstore.set_public_key(peer, conn.channel.remote_public_key)
        self.identify.track(conn)
        try:
            async with anyio.create_task_group() as tg:
                await tg.start(conn.run)
                if started is not None:
                    started.set()
                tg.start_soon(self.identify.identify, conn)
        except Exception:
            # A bug in a stream handler must not take the host down: drop this connection only.
            log.exception("connection to %s failed", peer)
        finally:
            held.release()
            if started is not None:
                started.set()
            self.identify.forget(conn)
            if self.connections.remove(conn):
                now = self.clock.monotonic()
                self.peerstore.set_addrs_ttl(peer, RECENTLY_CONNECTED_ADDR_TTL, now)
            log.debug("connection to %s closed: %s", peer, conn.close_reason)

    async def _close_later(self, conn: MuxedConnection) -> None:
        """Close a duplicate once the streams on it are done (or the grace ran out)."""
        with anyio.move_on_after(DUPLICATE_CONNECTION_GRACE):
            while conn.streams and not conn.closed:
                await conn.streams_changed.wait()
        await conn.close("duplicate connection")

    async def wait_connected(self, peer: PeerId) -> MuxedConnection:
        """Wait until a connection to `peer` exists (e.g. one the peer is dialing)."""
        return await self.connections.wait_connected(peer)

    async def wait_identified(self, peer: PeerId) -> None:
        conn = self.connections.get(peer)
        if conn is not None:
            await self.identify.wait_identified(conn)

    def connection(self, peer: PeerId) -> MuxedConnection | None:
        return self.connections.get(peer)

    def connected_peers(self) -> list[PeerId]:
        return self.connections.peers()

    def all_connections(self) -> list[MuxedConnection]:
        """Every open connection, duplicates of one peer included."""
        return self.connections.all()

    @property
    def connection_count(self) -> int:
        return len(self.connections)

    async def disconnect(self, peer: PeerId) -> None:
        for conn in self.connections.of_peer(peer):
            await conn.close("disconnected locally")

    # ---------------------------------------------------------------- streams
    async def new_stream(
        self, peer: PeerId, protocols: Sequence[str], *, addrs: Sequence[Multiaddr] = ()
    ) -> MuxedStream:
        conn = await self.connect(peer, addrs)
        if len(protocols) == 1 and protocols[0] in self.peerstore.protocols(peer):
            # It told us it speaks it: propose with the first message, not a round trip ahead.
            stream = await self._open_counted(conn)
            stream.negotiate_lazily(protocols[0])
            return stream
        return await self.open_stream_on(conn, protocols)

    async def _open_counted(self, conn: MuxedConnection) -> MuxedStream:
        """A new outbound stream on `conn`, holding its place in the stream budget."""
        held = self.resources.open_stream(conn.remote_peer, inbound=False)
        try:
            stream = await conn.open_stream()
        except BaseException:
            held.release()
            raise
        stream.hold(held)
        return stream

    async def open_stream_on(self, conn: MuxedConnection, protocols: Sequence[str]) -> MuxedStream:
        stream = await self._open_counted(conn)
        try:
            with anyio.fail_after(self.limits.negotiation_timeout):
                protocol, rest = await select_protocol(stream, protocols)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await stream.reset()
            raise
        stream.protocol = protocol
        stream.unread(rest)
        return stream

    async def _handle_stream(self, stream: MuxedStream) -> None:
        try:
            with anyio.fail_after(self.limits.negotiation_timeout):
                protocol, rest = await handle_protocol(stream, self._handlers.__contains__)
        except (ShardrouteError, TimeoutError, anyio.EndOfStream) as exc:
            if not isinstance(exc, (ConnectionClosed, StreamReset)):
                log.debug("stream from %s: negotiation failed: %s", stream.remote_peer, exc)
            await stream.reset()
            return
        stream.protocol = protocol
        stream.unread(rest)
        handler = self._handlers.get(protocol)
        if handler is None:  # removed while negotiating
            await stream.reset()
            return
        try:
            served = self.resources.serve_protocol(stream.remote_peer, protocol)
        except ResourceLimitExceeded as exc:
            log.debug("%s stream from %s refused: %s", protocol, stream.remote_peer, exc)
            await stream.reset()
            return
        try:
            await handler(stream)
        except (RemoteProtocolError, MultistreamError, TimeoutError) as exc:
            log.info("%s stream from %s ended: %s", protocol, stream.remote_peer, exc)
            await stream.reset()
        except (ConnectionClosed, StreamReset, anyio.EndOfStream):
            await stream.reset()
        except ShardrouteError as exc:
            # A handler's own failure (a store that cannot write, a limit) ends its stream,
            # never the connection that other streams share.
            log.warning("%s stream from %s failed: %s", protocol, stream.remote_peer, exc)
            await stream.reset()
        finally:
            served.release()

    # ---------------------------------------------------------------- ping
    async def ping(self, peer: PeerId, count: int = 1) -> list[float]:
        stream = await self.new_stream(peer, [PING_PROTOCOL])
        return await ping_round_trips(stream, count)
