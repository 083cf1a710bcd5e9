"""TCP, the only transport: listeners that hand accepted sockets on, and dials that map every
OS error to `DialError`."""

from __future__ import annotations

import errno
import socket
from collections.abc import Awaitable, Callable

import anyio
import anyio.abc
import psutil
from anyio.abc import SocketAttribute
from multiaddr import Multiaddr

from shardroute.addrs import tcp_endpoint, tcp_multiaddr
from shardroute.errors import DialError, ListenError, StartupError

AcceptHandler = Callable[[anyio.abc.SocketStream], Awaitable[None]]


def remote_multiaddr(raw: anyio.abc.SocketStream) -> Multiaddr:
    remote = raw.extra(SocketAttribute.remote_address)
    return tcp_multiaddr(str(remote[0]), int(remote[1]))


def local_multiaddr(raw: anyio.abc.SocketStream) -> Multiaddr:
    local = raw.extra(SocketAttribute.local_address)
    return tcp_multiaddr(str(local[0]), int(local[1]))


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
    try:
        listener = await anyio.create_tcp_listener(
            local_host=host, local_port=port, reuse_port=False
        )
    except OSError as exc:
        raise ListenError(f"cannot listen on {addr}: {bind_failure(exc, port)}") from None
    bound = []
    for sub in getattr(listener, "listeners", [listener]):
        sockname = sub.extra(SocketAttribute.local_address)
        bound.append(tcp_multiaddr(str(sockname[0]), int(sockname[1])))
    task_status.started(bound)
    async with listener:
        await listener.serve(handler, task_group=task_group)


async def dial_tcp(addr: Multiaddr, timeout: float) -> anyio.abc.SocketStream:  # noqa: ASYNC109
    endpoint = tcp_endpoint(addr)
    if endpoint is None:
        raise DialError(f"cannot dial {addr}: not a TCP address")
    host, port = endpoint
    try:
        with anyio.fail_after(timeout):
            return await anyio.connect_tcp(host, port)
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
