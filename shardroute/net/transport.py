"""TCP, the only transport: listeners that hand accepted sockets on, and dials that map every
OS error to `DialError`."""

from __future__ import annotations

import asyncio
import errno
import socket
from collections.abc import Callable, Coroutine
from typing import Any, cast

import anyio
import anyio.abc
import anyio.lowlevel
import psutil
from multiaddr import Multiaddr

from shardroute.addrs import tcp_endpoint, tcp_multiaddr
from shardroute.errors import DialError, ListenError, StartupError

# Reading pauses once this much arrived unread (the reader is behind), and resumes below half.
READ_HIGH_WATER = 1024 * 1024


class TcpStream(asyncio.Protocol):
    """One TCP connection: an asyncio protocol with the byte-stream face the upgrade and the
    muxer read and write (`send`, `receive`, `aclose`).

    It keeps the socket's reader registered and buffers what arrives, pausing only when the
    buffer passes READ_HIGH_WATER. (anyio's SocketStream stops and restarts the reader around
    every receive that waits: two epoll_ctl calls each, near a tenth of a node's CPU.)
    """

    def __init__(self, on_made: Callable[[], None] | None = None) -> None:
        self._on_made = on_made  # an accepted connection: hand it to the listener's handler
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._eof = False
        self._lost = False
        self._error: BaseException | None = None  # what ended the connection, if not a close
        self._closed = False
        self._reading_paused = False
        self._readable: asyncio.Future[None] | None = None
        self._writable: asyncio.Future[None] | None = None
        self._writing_paused = False
        self.remote_address: tuple[str, int] = ("", 0)
        self.local_address: tuple[str, int] = ("", 0)

    # -- asyncio's side ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports have asyncio.Transport's methods without being its subclass.
        self._transport = cast(asyncio.Transport, transport)
        peer, sock = transport.get_extra_info("peername"), transport.get_extra_info("sockname")
        if peer:
            self.remote_address = (str(peer[0]), int(peer[1]))
        if sock:
            self.local_address = (str(sock[0]), int(sock[1]))
        if self._on_made is not None:
            self._on_made()

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if len(self._buffer) > READ_HIGH_WATER and not self._reading_paused:
            assert self._transport is not None
            self._transport.pause_reading()
            self._reading_paused = True
        self._wake_reader()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake_reader()
        return True  # keep our side open for writing (a half-close)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._error = exc
        self._eof = True
        self._wake_reader()
        self.resume_writing()

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)

    def _wake_reader(self) -> None:
        if self._readable is not None and not self._readable.done():
            self._readable.set_result(None)

    # -- the stream's side ---------------------------------------------------------------------

    async def receive(self, max_bytes: int = 65536) -> bytes:
        while not self._buffer:
            if self._closed:
                raise anyio.ClosedResourceError
            if self._eof:
                if self._error is not None:
                    raise anyio.BrokenResourceError from self._error
                raise anyio.EndOfStream
            self._readable = asyncio.get_running_loop().create_future()
            try:
                await self._readable
            finally:
                self._readable = None
        chunk = bytes(self._buffer[:max_bytes])
        del self._buffer[:max_bytes]
        if self._reading_paused and len(self._buffer) < READ_HIGH_WATER // 2:
            self._reading_paused = False
            if self._transport is not None and not self._transport.is_closing():
                self._transport.resume_reading()
        return chunk

    async def send(self, item: bytes) -> None:
        transport = self._transport
        if self._closed:
            raise anyio.ClosedResourceError
        if transport is None or self._lost or transport.is_closing():
            raise anyio.BrokenResourceError from self._error
        transport.write(item)
        while self._writing_paused and not self._lost:
            self._writable = asyncio.get_running_loop().create_future()
            try:
                await self._writable
            finally:
                self._writable = None
        if self._lost:
            raise anyio.BrokenResourceError from self._error

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    async def aclose(self) -> None:
        self._closed = True
        if self._transport is not None:
            self._transport.close()
        self._wake_reader()
        await anyio.lowlevel.checkpoint()


AcceptHandler = Callable[[TcpStream], Coroutine[Any, Any, None]]


def remote_multiaddr(raw: TcpStream) -> Multiaddr:
    host, port = raw.remote_address
    if not host:
        raise OSError("the connection has no peer address (it was reset)")
    return tcp_multiaddr(host, port)


def local_multiaddr(raw: TcpStream) -> Multiaddr:
    host, port = raw.local_address
    return tcp_multiaddr(host, port)


async def listen_tcp(
    addr: Multiaddr,
    handler: AcceptHandler,
    task_group: anyio.abc.TaskGroup,
    *,
    task_status: anyio.abc.TaskStatus[list[Multiaddr]],
) -> None:
    """Listen on `addr` until cancelled; `task_status` receives the bound addresses (port 0
    resolved, one per socket: a dual-stack wildcard binds two)."""
    endpoint = tcp_endpoint(addr)
    if endpoint is None:
        raise ValueError(f"cannot listen on {addr}: only /ip4 or /ip6 TCP addresses are supported")
    host, port = endpoint

    def accepted() -> TcpStream:
        def serve() -> None:
            try:
                task_group.start_soon(handler, stream)
            except RuntimeError:  # the host is shutting down
                stream.abort()

        stream = TcpStream(serve)
        return stream

    loop = asyncio.get_running_loop()
    try:
        server = await loop.create_server(
            accepted, host=host or None, port=port, reuse_address=True, reuse_port=False
        )
    except OSError as exc:
        raise ListenError(f"cannot listen on {addr}: {bind_failure(exc, port)}") from None
    try:
        bound = []
        for sock in server.sockets:
            sockname = sock.getsockname()
            bound.append(tcp_multiaddr(str(sockname[0]), int(sockname[1])))
        task_status.started(bound)
        await anyio.sleep_forever()
    finally:
        server.close()


async def dial_tcp(addr: Multiaddr, timeout: float) -> TcpStream:  # noqa: ASYNC109
    endpoint = tcp_endpoint(addr)
    if endpoint is None:
        raise DialError(f"cannot dial {addr}: not a TCP address")
    host, port = endpoint
    try:
        with anyio.fail_after(timeout):
            _, stream = await asyncio.get_running_loop().create_connection(TcpStream, host, port)
            return stream
    except (OSError, TimeoutError) as exc:
        raise DialError(f"dial {addr} failed: {exc or type(exc).__name__}") from exc


def check_bindable(setting: str, address: str) -> None:
    """Raise StartupError naming `setting` if HOST:PORT cannot be bound now (for servers
    that would otherwise log their own noise first: gRPC's core does)."""
    host, _, port_text = address.rpartition(":")
    port = int(port_text)
    if port == 0:
        return
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        infos = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM)
    except OSError as exc:
        raise StartupError(f"{setting} {address}: cannot resolve {host!r}: {exc}") from None
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # as the server will bind: a restart right after a crash must not be refused for
        # the dead process's TIME_WAIT connections; a live listener still refuses it
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(infos[0][4])
        except OSError as exc:
            raise StartupError(
                f"{setting} {address}: cannot listen: {bind_failure(exc, port)}"
            ) from None


def bind_failure(exc: OSError, port: int) -> str:
    """Why a bind failed, in words, naming who holds the port when that can be found."""
    if exc.errno == errno.EADDRINUSE:
        holder = port_holder(port)
        return "the port is in use" + (f" by {holder}" if holder else "")
    if exc.errno == errno.EADDRNOTAVAIL:
        return "this host has no such address"
    if exc.errno == errno.EACCES:
        return "permission denied (ports below 1024 need privileges)"
    return exc.strerror or str(exc)


def port_holder(port: int) -> str | None:
    """'pid N (command line)' of the process listening on TCP `port`, if it can be seen."""
    try:
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
                if conn.pid is None:
                    return None
                command = " ".join(psutil.Process(conn.pid).cmdline())[:120]
                return f"pid {conn.pid} ({command})"
    except (psutil.Error, OSError):
        return None
    return None
