"""TCP, the only transport: listeners that hand accepted sockets on, and dials that map every
OS error to `DialError`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio
import anyio.abc
from anyio.abc import SocketAttribute
from multiaddr import Multiaddr

from shardroute.addrs import tcp_endpoint, tcp_multiaddr
from shardroute.errors import DialError

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
    listener = await anyio.create_tcp_listener(local_host=host, local_port=port, reuse_port=False)
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
