"""The host: listens and dials TCP, upgrades connections (Noise, Yamux), routes streams to
protocol handlers, runs identify and ping, and keeps one connection per peer.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import anyio
import anyio.abc
import anyio.lowlevel
from anyio.abc import SocketAttribute
from multiaddr import Multiaddr

from shardroute import __version__, limits
from shardroute.addrs import split_p2p, tcp_endpoint, tcp_multiaddr
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
from shardroute.net.identify import handle_push, identify_peer, send_identify
from shardroute.net.io import TRANSPORT_ERRORS
from shardroute.net.muxer import Direction, MuxedConnection, MuxedStream
from shardroute.net.negotiate import handle_protocol, select_protocol
from shardroute.net.peerstore import CONNECTED_ADDR_TTL, RECENTLY_CONNECTED_ADDR_TTL, Peerstore
from shardroute.net.ping import PING_PROTOCOL, handle_ping, ping_round_trips
from shardroute.net.secure import SecureChannel, secure_inbound, secure_outbound
from shardroute.protocol.identify import IDENTIFY_PROTOCOL, IDENTIFY_PUSH_PROTOCOL, IdentifyInfo
from shardroute.wakeup import Signal

log = logging.getLogger(__name__)

NOISE_PROTOCOL = "/noise"
# What may end an inbound upgrade: it ends that connection only.
UPGRADE_ERRORS: tuple[type[BaseException], ...] = (ShardrouteError, TimeoutError, *TRANSPORT_ERRORS)
YAMUX_PROTOCOL = "/yamux/1.0.0"
# A connection that lost the simultaneous-dial tie-break gets this long to finish its streams.
DUPLICATE_CONNECTION_GRACE = 5.0

StreamHandler = Callable[[MuxedStream], Awaitable[None]]
IdentifiedCallback = Callable[[PeerId, IdentifyInfo, bool], None]
DisconnectedCallback = Callable[[PeerId], None]


@dataclass(frozen=True, slots=True)
class HostLimits:
    max_connections: int = limits.MAX_CONNECTIONS
    max_inbound_pending: int = limits.MAX_INBOUND_PENDING
    max_streams_per_connection: int = limits.YAMUX_MAX_STREAMS
    dial_timeout: float = limits.DIAL_TIMEOUT
    upgrade_timeout: float = limits.UPGRADE_TIMEOUT
    negotiation_timeout: float = limits.STREAM_NEGOTIATION_TIMEOUT


class Host:
    def __init__(
        self,
        identity: Ed25519PrivateKey,
        *,
        listen_addrs: Sequence[Multiaddr] = (),
        clock: Clock | None = None,
        host_limits: HostLimits | None = None,
        agent_version: str = f"shardroute/{__version__}",
    ) -> None:
        self.identity = identity
        self.peer_id = PeerId.from_public_key(identity.public_key)
        self.clock: Clock = clock or SystemClock()
        self.limits = host_limits or HostLimits()
        self.agent_version = agent_version
        self.peerstore = Peerstore()
        self.connected_addr_ttl = CONNECTED_ADDR_TTL
        self._requested_listen = list(listen_addrs)
        self._listen_addrs: list[Multiaddr] = []
        self._listen_scopes: list[anyio.CancelScope] = []
        self._handlers: dict[str, StreamHandler] = {}
        self._connections: dict[PeerId, MuxedConnection] = {}
        self._all_connections: set[MuxedConnection] = set()
        self._pending_dials: dict[PeerId, anyio.Event] = {}
        self._dial_errors: dict[PeerId, BaseException] = {}
        self._inbound_pending = 0
        self._identified: dict[MuxedConnection, anyio.Event] = {}
        self._on_identified: list[IdentifiedCallback] = []
        self._on_disconnected: list[DisconnectedCallback] = []
        self._observed: list[Multiaddr] = []
        self._tg: anyio.abc.TaskGroup | None = None
        self._push_pending = False
        self._adopted = Signal()
        self.set_stream_handler(IDENTIFY_PROTOCOL, lambda s: send_identify(self, s))
        self.set_stream_handler(IDENTIFY_PUSH_PROTOCOL, lambda s: handle_push(self, s))
        self.set_stream_handler(PING_PROTOCOL, handle_ping)

    # ---------------------------------------------------------------- lifecycle
    async def __aenter__(self) -> Host:
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        try:
            for addr in self._requested_listen:
                await self._tg.start(self._listen, addr)
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
            for conn in list(self._all_connections):
                await conn.close("host shutting down")
        tg.cancel_scope.cancel()
        await tg.__aexit__(None, None, None)

    @property
    def listen_addrs(self) -> list[Multiaddr]:
        """The addresses we listen on, ports resolved (wildcards as given)."""
        return list(self._listen_addrs)

    def advertised_addrs(self) -> list[Multiaddr]:
        """Dialable addresses for identify and DHT records: wildcards expanded, never 0.0.0.0."""
        out: list[Multiaddr] = []
        for addr in self._listen_addrs:
            endpoint = tcp_endpoint(addr)
            if endpoint is None:
                continue
            host, port = endpoint
            if host in ("0.0.0.0", "::"):
                for local in _local_addresses(ipv6=host == "::"):
                    out.append(tcp_multiaddr(local, port))
            else:
                out.append(addr)
        return list(dict.fromkeys(out))

    def note_observed_addr(self, addr: Multiaddr) -> None:
        if addr not in self._observed:
            self._observed = [*self._observed[-7:], addr]

    # ---------------------------------------------------------------- handlers
    def set_stream_handler(self, protocol: str, handler: StreamHandler) -> None:
        self._handlers[protocol] = handler
        self._schedule_push()

    def remove_stream_handler(self, protocol: str) -> None:
        if self._handlers.pop(protocol, None) is not None:
            self._schedule_push()

    def protocols(self) -> list[str]:
        return sorted(self._handlers)

    def on_identified(self, callback: IdentifiedCallback) -> None:
        self._on_identified.append(callback)

    def on_disconnected(self, callback: DisconnectedCallback) -> None:
        self._on_disconnected.append(callback)

    def notify_identified(self, peer: PeerId, info: IdentifyInfo, pushed: bool) -> None:
        for callback in self._on_identified:
            callback(peer, info, pushed)

    def _schedule_push(self) -> None:
        """Tell connected peers our protocols changed (identify push), once per change burst."""
        if self._tg is None or self._push_pending or not self._connections:
            return
        self._push_pending = True
        self._tg.start_soon(self._push_all)

    async def _push_all(self) -> None:
        await anyio.lowlevel.checkpoint()  # let a burst of handler changes settle into one push
        self._push_pending = False
        for conn in list(self._connections.values()):
            if self._tg is not None:
                self._tg.start_soon(self._push_one, conn)

    async def _push_one(self, conn: MuxedConnection) -> None:
        try:
            with anyio.fail_after(limits.IDENTIFY_TIMEOUT):
                stream = await self._open_on(conn, [IDENTIFY_PUSH_PROTOCOL])
                await send_identify(self, stream)
        except (ShardrouteError, TimeoutError) as exc:
            log.debug("identify push to %s failed: %s", conn.remote_peer, exc)

    # ---------------------------------------------------------------- listening
    async def _listen(self, addr: Multiaddr, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        endpoint = tcp_endpoint(addr)
        if endpoint is None:
            raise ValueError(
                f"cannot listen on {addr}: only /ip4 or /ip6 TCP addresses are supported"
            )
        host, port = endpoint
        listener = await anyio.create_tcp_listener(
            local_host=host, local_port=port, reuse_port=False
        )
        for sub in getattr(listener, "listeners", [listener]):
            bound = sub.extra(SocketAttribute.local_address)
            self._listen_addrs.append(tcp_multiaddr(str(bound[0]), int(bound[1])))
        task_status.started()
        assert self._tg is not None
        with anyio.CancelScope() as scope:
            self._listen_scopes.append(scope)
            async with listener:
                await listener.serve(self._accept, task_group=self._tg)

    async def _accept(self, raw: anyio.abc.SocketStream) -> None:
        remote = raw.extra(SocketAttribute.remote_address)
        remote_addr = tcp_multiaddr(str(remote[0]), int(remote[1]))
        if (
            len(self._all_connections) >= self.limits.max_connections
            or self._inbound_pending >= self.limits.max_inbound_pending
        ):
            log.info("refusing inbound connection from %s: connection limit", remote_addr)
            await raw.aclose()
            return
        self._inbound_pending += 1
        try:
            with anyio.fail_after(self.limits.upgrade_timeout):
                channel, plaintext = await self._upgrade_inbound(raw)
        except UPGRADE_ERRORS as exc:
            log.info("inbound connection from %s failed to upgrade: %r", remote_addr, exc)
            await raw.aclose()
            return
        finally:
            self._inbound_pending -= 1
        conn = self._make_connection(channel, Direction.INBOUND, remote_addr, plaintext)
        await self._serve_connection(conn)

    async def _upgrade_inbound(self, raw: anyio.abc.SocketStream) -> tuple[SecureChannel, bytes]:
        _, early = await handle_protocol(_Prefixed(raw), [NOISE_PROTOCOL])
        channel = await secure_inbound(_Prefixed(raw, early), self.identity)
        _, rest = await handle_protocol(channel, [YAMUX_PROTOCOL])
        return channel, rest + channel.take_buffered()

    # ---------------------------------------------------------------- dialing
    async def dial(self, addr: Multiaddr) -> MuxedConnection:
        """Dial a multiaddr; with a /p2p/ suffix the peer must authenticate as that ID."""
        transport, peer = split_p2p(addr)
        if peer is None:
            return await self._dial_addr(transport, None)
        return await self.connect(peer, [transport])

    async def connect(self, peer: PeerId, addrs: Sequence[Multiaddr] = ()) -> MuxedConnection:
        """The live connection to `peer`, dialing it (its known or given addresses) if needed.

        Concurrent calls for one peer share a single dial.
        """
        if peer == self.peer_id:
            raise DialError("refusing to dial ourselves")
        while True:
            existing = self._connections.get(peer)
            if existing is not None and not existing.closed and not existing.draining:
                return existing
            pending = self._pending_dials.get(peer)
            if pending is None:
                break
            await pending.wait()
            error = self._dial_errors.get(peer)
            if error is not None and self._connections.get(peer) is None:
                raise DialError(str(error)) from error
        done = anyio.Event()
        self._pending_dials[peer] = done
        self._dial_errors.pop(peer, None)
        try:
            if addrs:
                self.peerstore.add_addrs(
                    peer, addrs, RECENTLY_CONNECTED_ADDR_TTL, self.clock.monotonic()
                )
            candidates = [a for a in (*addrs, *self.peerstore.addrs(peer, self.clock.monotonic()))]
            candidates = [a for a in dict.fromkeys(candidates) if tcp_endpoint(a) is not None]
            if not candidates:
                raise DialError(f"no dialable TCP address known for {peer}")
            errors: list[str] = []
            for candidate in candidates:
                try:
                    return await self._dial_addr(candidate, peer)
                except DialPeerMismatch:
                    raise
                except DialError as exc:
                    errors.append(str(exc))
            raise DialError(f"could not dial {peer}: " + "; ".join(errors))
        except BaseException as exc:
            self._dial_errors[peer] = exc
            raise
        finally:
            del self._pending_dials[peer]
            done.set()

    async def _dial_addr(self, addr: Multiaddr, expected: PeerId | None) -> MuxedConnection:
        if self._tg is None:
            raise DialError("host is not running")
        if len(self._all_connections) >= self.limits.max_connections:
            raise ResourceLimitExceeded("connection limit reached")
        endpoint = tcp_endpoint(addr)
        if endpoint is None:
            raise DialError(f"cannot dial {addr}: not a TCP address")
        host, port = endpoint
        try:
            with anyio.fail_after(self.limits.dial_timeout):
                raw = await anyio.connect_tcp(host, port)
        except (OSError, TimeoutError) as exc:
            raise DialError(f"dial {addr} failed: {exc or type(exc).__name__}") from exc
        try:
            with anyio.fail_after(self.limits.upgrade_timeout):
                _, early = await select_protocol(_Prefixed(raw), [NOISE_PROTOCOL])
                channel = await secure_outbound(_Prefixed(raw, early), self.identity, expected)
                _, rest = await select_protocol(channel, [YAMUX_PROTOCOL])
        except BaseException as exc:
            with anyio.move_on_after(1, shield=True):
                await raw.aclose()
            if isinstance(exc, PeerIdMismatch):
                raise DialPeerMismatch(f"dial {addr}: {exc}") from exc
            if isinstance(exc, ShardrouteError):
                raise DialError(f"dial {addr}: handshake failed: {exc}") from exc
            if isinstance(exc, (TimeoutError, *TRANSPORT_ERRORS)):
                reason = str(exc) or type(exc).__name__
                raise DialError(f"dial {addr}: handshake failed: {reason}") from exc
            raise
        conn = self._make_connection(
            channel, Direction.OUTBOUND, addr, rest + channel.take_buffered()
        )
        started = anyio.Event()
        self._tg.start_soon(self._serve_connection, conn, started)
        await started.wait()
        self.peerstore.add_addrs(
            conn.remote_peer, [addr], self.connected_addr_ttl, self.clock.monotonic()
        )
        return self._connections.get(conn.remote_peer, conn)

    # ---------------------------------------------------------------- connections
    def _make_connection(
        self, channel: SecureChannel, direction: Direction, remote_addr: Multiaddr, plaintext: bytes
    ) -> MuxedConnection:
        conn: MuxedConnection

        def on_stream(stream: MuxedStream) -> None:
            conn.spawn(self._handle_stream, stream)

        conn = MuxedConnection(
            channel,
            direction=direction,
            remote_addr=remote_addr,
            initial_plaintext=plaintext,
            on_stream=on_stream,
            max_streams=self.limits.max_streams_per_connection,
        )
        return conn

    async def _serve_connection(
        self, conn: MuxedConnection, started: anyio.Event | None = None
    ) -> None:
        peer = conn.remote_peer
        self._all_connections.add(conn)
        self._adopt(conn)
        self.peerstore.set_public_key(peer, conn.channel.remote_public_key)
        self._identified[conn] = anyio.Event()
        try:
            async with anyio.create_task_group() as tg:
                await tg.start(conn.run)
                if started is not None:
                    started.set()
                tg.start_soon(self._identify, conn)
        except Exception:
            # A bug in a stream handler must not take the host down: drop this connection only.
            log.exception("connection to %s failed", peer)
        finally:
            if started is not None:
                started.set()
            self._identified.pop(conn, None)
            self._all_connections.discard(conn)
            if self._connections.get(peer) is conn:
                del self._connections[peer]
                replacement = next(
                    (c for c in self._all_connections if c.remote_peer == peer and not c.closed),
                    None,
                )
                if replacement is not None:
                    self._connections[peer] = replacement
                else:
                    now = self.clock.monotonic()
                    self.peerstore.set_addrs_ttl(peer, RECENTLY_CONNECTED_ADDR_TTL, now)
                    for callback in self._on_disconnected:
                        callback(peer)
            log.debug("connection to %s closed: %s", peer, conn.close_reason)

    def _adopt(self, conn: MuxedConnection) -> None:
        """Keep one connection per peer. When both sides dialed at once, both keep the one
        dialed by the peer with the smaller ID, so the two ends agree without talking."""
        peer = conn.remote_peer
        self._adopted.fire()
        current = self._connections.get(peer)
        if current is None or current.closed:
            self._connections[peer] = conn
            return
        keep, drop = (
            (conn, current)
            if _preferred(conn, self.peer_id) < _preferred(current, self.peer_id)
            else (
                current,
                conn,
            )
        )
        self._connections[peer] = keep
        drop.draining = True
        if self._tg is not None:
            self._tg.start_soon(self._close_later, drop)

    async def _close_later(self, conn: MuxedConnection) -> None:
        with anyio.move_on_after(DUPLICATE_CONNECTION_GRACE):
            await conn.wait_closed()
        await conn.close("duplicate connection")

    async def _identify(self, conn: MuxedConnection) -> None:
        try:
            stream = await self._open_on(conn, [IDENTIFY_PROTOCOL])
            info = await identify_peer(self, stream)
        except (ShardrouteError, TimeoutError) as exc:
            log.info("identify with %s failed: %s", conn.remote_peer, exc)
            return
        finally:
            event = self._identified.get(conn)
            if event is not None:
                event.set()
        self.notify_identified(conn.remote_peer, info, False)

    async def wait_connected(self, peer: PeerId) -> MuxedConnection:
        """Wait until a connection to `peer` exists (e.g. one the peer is dialing)."""
        while (conn := self.connection(peer)) is None:
            await self._adopted.wait()
        return conn

    async def wait_identified(self, peer: PeerId) -> None:
        conn = self._connections.get(peer)
        if conn is not None and (event := self._identified.get(conn)) is not None:
            await event.wait()

    def connection(self, peer: PeerId) -> MuxedConnection | None:
        conn = self._connections.get(peer)
        return conn if conn is not None and not conn.closed else None

    def connected_peers(self) -> list[PeerId]:
        return [p for p, c in self._connections.items() if not c.closed]

    def all_connections(self) -> list[MuxedConnection]:
        """Every open connection, duplicates of one peer included."""
        return list(self._all_connections)

    @property
    def connection_count(self) -> int:
        return len(self._all_connections)

    async def disconnect(self, peer: PeerId) -> None:
        for conn in [c for c in self._all_connections if c.remote_peer == peer]:
            await conn.close("disconnected locally")

    # ---------------------------------------------------------------- streams
    async def new_stream(
        self, peer: PeerId, protocols: Sequence[str], *, addrs: Sequence[Multiaddr] = ()
    ) -> MuxedStream:
        conn = await self.connect(peer, addrs)
        return await self._open_on(conn, protocols)

    async def _open_on(self, conn: MuxedConnection, protocols: Sequence[str]) -> MuxedStream:
        stream = await conn.open_stream()
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
            await handler(stream)
        except (RemoteProtocolError, MultistreamError, TimeoutError) as exc:
            log.info("%s stream from %s ended: %s", protocol, stream.remote_peer, exc)
            await stream.reset()
        except (ConnectionClosed, StreamReset, anyio.EndOfStream):
            await stream.reset()

    # ---------------------------------------------------------------- ping
    async def ping(self, peer: PeerId, count: int = 1) -> list[float]:
        stream = await self.new_stream(peer, [PING_PROTOCOL])
        return await ping_round_trips(stream, count)


def _preferred(conn: MuxedConnection, self_id: PeerId) -> tuple[bytes, int]:
    dialer = self_id if conn.direction is Direction.OUTBOUND else conn.remote_peer
    return (dialer.raw, id(conn))


def _local_addresses(*, ipv6: bool) -> list[str]:
    """Addresses to advertise for a wildcard listener: loopback plus this host's addresses."""
    found = ["::1"] if ipv6 else ["127.0.0.1"]
    family = socket.AF_INET6 if ipv6 else socket.AF_INET
    try:
        infos = socket.getaddrinfo(socket.gethostname(), None, family, socket.SOCK_STREAM)
    except OSError:
        infos = []
    for info in infos:
        address = str(info[4][0]).split("%")[0]
        ip = ipaddress.ip_address(address)
        if not ip.is_unspecified and not ip.is_link_local and address not in found:
            found.append(address)
    return found


class _Prefixed:
    """A byte stream that first yields bytes already read past a negotiation."""

    def __init__(self, raw: anyio.abc.ByteStream, prefix: bytes = b"") -> None:
        self._raw = raw
        self._prefix = prefix

    async def receive(self, max_bytes: int = 65536) -> bytes:
        if self._prefix:
            chunk, self._prefix = self._prefix[:max_bytes], self._prefix[max_bytes:]
            return chunk
        return await self._raw.receive(max_bytes)

    async def send(self, item: bytes) -> None:
        await self._raw.send(item)

    async def aclose(self) -> None:
        await self._raw.aclose()
