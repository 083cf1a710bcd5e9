"""Dialing a peer over its addresses, best first: wrong, dead and silent addresses are passed
over, on real sockets on 127.0.0.1."""

from __future__ import annotations

import anyio
import anyio.abc
import pytest
from multiaddr import Multiaddr

from shardroute.errors import DialError
from shardroute.net.addresses import Scope
from shardroute.net.dialer import rank
from shardroute.net.host import HostLimits
from tests.net.test_host import ECHO, echo_handler, new_host
from tests.support.serve import free_port

pytestmark = pytest.mark.anyio


def ma(text: str) -> Multiaddr:
    return Multiaddr(text)


def test_ranking_puts_our_own_networks_first_then_public_then_the_rest() -> None:
    lan, other_lan = ma("/ip4/10.0.0.5/tcp/1"), ma("/ip4/192.168.9.9/tcp/1")
    public4, public6 = ma("/ip4/203.0.113.5/tcp/1"), ma("/ip6/2001:db8::5/tcp/1")
    loop = ma("/ip4/127.0.0.1/tcp/1")
    mixed = [loop, public6, other_lan, public4, lan]
    assert rank(mixed, {Scope.PRIVATE}) == [other_lan, lan, public4, public6, loop]
    assert rank(mixed, {Scope.LOOPBACK}) == [loop, public4, public6, other_lan, lan]
    assert rank([lan, lan, public4], set()) == [public4, lan]


async def silent_listener(tg: anyio.abc.TaskGroup, held: list[anyio.abc.SocketStream]) -> Multiaddr:
    """A TCP port that accepts and then never says a byte."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")

    async def hold(stream: anyio.abc.SocketStream) -> None:
        held.append(stream)
        await anyio.sleep_forever()

    tg.start_soon(listener.serve, hold)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    return ma(f"/ip4/127.0.0.1/tcp/{port}")


async def test_dead_wrong_and_silent_addresses_are_passed_over() -> None:
    # A long upgrade timeout: a dial that waited on the silent address would fail the test.
    limits = HostLimits(upgrade_timeout=60.0)
    async with new_host(host_limits=limits) as a, new_host() as b, new_host() as stranger:
        b.set_stream_handler(ECHO, echo_handler)
        live = b.listen_addrs[0]
        dead = ma(f"/ip4/127.0.0.1/tcp/{free_port()}")  # nothing listens: refused at once
        wrong = stranger.listen_addrs[0]  # another peer answers there
        held: list[anyio.abc.SocketStream] = []
        async with anyio.create_task_group() as tg:
            silent = await silent_listener(tg, held)
            with anyio.fail_after(10):
                conn = await a.connect(b.peer_id, [dead, wrong, silent, live])
            assert conn.remote_peer == b.peer_id
            stream = await a.new_stream(b.peer_id, [ECHO])
            await stream.send(b"reached")
            assert await stream.receive() == b"reached"
            tg.cancel_scope.cancel()
        assert held, "the silent address was tried too (staggered, not waited on)"


async def test_when_every_address_fails_the_error_names_each() -> None:
    async with new_host() as a, new_host() as b, new_host() as stranger:
        dead = ma(f"/ip4/127.0.0.1/tcp/{free_port()}")
        with pytest.raises(DialError) as failure:
            await a.connect(b.peer_id, [dead, stranger.listen_addrs[0]])
        text = str(failure.value)
        assert str(dead) in text and str(stranger.peer_id) in text and str(b.peer_id) in text


async def test_a_node_never_dials_its_own_listen_addresses() -> None:
    async with new_host() as a, new_host() as b:
        with pytest.raises(DialError, match="no dialable TCP address"):
            await a.connect(b.peer_id, [a.listen_addrs[0]])
        assert a.connection_count == 0
