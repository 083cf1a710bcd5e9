"""Dial failures leave nothing behind: hundreds of failed dials to distinct peers (refused,
answered by the wrong peer, silent until the upgrade timeout) end with no per-peer state in
the host but the addresses it was given, which the peerstore bounds; a failure never sticks
to the peer; and a dial's error message stays bounded however many addresses failed. Real
hosts on 127.0.0.1."""

from __future__ import annotations

import anyio
import anyio.abc
import pytest
from multiaddr import Multiaddr

from shardroute.errors import DialError
from shardroute.identity.keys import Ed25519PrivateKey
from shardroute.identity.peer_id import PeerId
from shardroute.net.dialer import MAX_REPORTED_ERRORS
from shardroute.net.host import Host, HostLimits
from shardroute.net.peerstore import Peerstore
from tests.net.test_dialer import silent_listener
from tests.net.test_host import ECHO, echo_handler, new_host, open_fds
from tests.support.serve import free_port

pytestmark = pytest.mark.anyio

FAILED_DIALS = 200
AT_ONCE = 25  # concurrent dials per round


def stranger_id() -> PeerId:
    return PeerId.from_public_key(Ed25519PrivateKey.generate().public_key)


def per_peer_state(host: Host) -> dict[str, int]:
    """Every per-peer or per-connection table of the host, by size."""
    resources = host.resources
    return {
        "pending dials": len(host._pending_dials),
        "connections": len(host.all_connections()),
        "registry": len(host.connections.peers()),
        "identify": len(host.identify._identified),
        "connection manager": len(host.connection_manager._first_seen)
        + len(host.connection_manager._idle_since),
        "resource peers": len(resources._peers),
        "pending by ip": len(resources._pending_by_ip),
        "pending by group": len(resources._pending_by_group),
        "connections by ip": len(resources._connections_by_ip),
        "pending upgrades": resources.pending,
        "inbound": resources.inbound,
        "outbound": resources.outbound,
        "memory": resources.memory,
    }


async def test_hundreds_of_failed_dials_to_distinct_peers_leave_no_state_behind() -> None:
    limits = HostLimits(upgrade_timeout=0.5)  # the silent address fails soon
    async with new_host(host_limits=limits) as a, new_host() as wrong, new_host() as b:
        b.set_stream_handler(ECHO, echo_handler)
        a.peerstore = Peerstore(max_peers=64)  # a small bound, to see it hold
        dialer_before = dict(vars(a.dialer))
        held: list[anyio.abc.SocketStream] = []
        async with anyio.create_task_group() as tg:
            silent = await silent_listener(tg, held)
            refused = Multiaddr(f"/ip4/127.0.0.1/tcp/{free_port()}")
            kinds = [refused, wrong.listen_addrs[0], silent]
            fds = open_fds()
            failures: list[BaseException] = []

            async def fail_one(i: int) -> None:
                with pytest.raises(DialError) as failure:
                    await a.connect(stranger_id(), [kinds[i % len(kinds)]])
                failures.append(failure.value)

            with anyio.fail_after(120):
                for start in range(0, FAILED_DIALS, AT_ONCE):
                    async with anyio.create_task_group() as dials:
                        for i in range(start, start + AT_ONCE):
                            dials.start_soon(fail_one, i)
            assert len(failures) == FAILED_DIALS
            assert held, "the silent address was dialed too"
            for socket in held:
                await socket.aclose()
            tg.cancel_scope.cancel()
        # what the host keeps per peer or connection is empty again
        assert per_peer_state(a) == dict.fromkeys(per_peer_state(a), 0)
        assert dict(vars(a.dialer)) == dialer_before  # the dialer keeps nothing per dial
        assert len(a.peerstore) <= 64  # the addresses it was given: bounded
        # every socket of every attempt was closed (the far ends, in this process too,
        # close theirs when they see the end)
        with anyio.fail_after(10):
            while open_fds() > fds:  # noqa: ASYNC110
                await anyio.sleep(0.05)
        # the host still dials, and the peer it failed to reach before is reachable now
        dead = Multiaddr(f"/ip4/127.0.0.1/tcp/{free_port()}")
        with pytest.raises(DialError):
            await a.connect(b.peer_id, [dead])
        with anyio.fail_after(10):
            conn = await a.connect(b.peer_id, [b.listen_addrs[0]])
        assert conn.remote_peer == b.peer_id
        stream = await a.new_stream(b.peer_id, [ECHO])
        await stream.send(b"still dialing")
        assert await stream.receive() == b"still dialing"
        assert len(a._pending_dials) == 0


async def test_callers_sharing_a_failed_dial_all_get_the_error_and_nothing_stays() -> None:
    async with new_host() as a, new_host() as b:
        dead = Multiaddr(f"/ip4/127.0.0.1/tcp/{free_port()}")
        errors: list[BaseException] = []

        async def dial() -> None:
            try:
                await a.connect(b.peer_id, [dead])
            except DialError as exc:
                errors.append(exc)

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                for _ in range(10):
                    tg.start_soon(dial)
        assert len(errors) == 10
        assert a._pending_dials == {}
        with anyio.fail_after(10):
            assert (await a.connect(b.peer_id, b.listen_addrs)).remote_peer == b.peer_id


async def test_a_dial_error_over_many_addresses_stays_bounded() -> None:
    async with new_host() as a:
        port = free_port()
        # 50 addresses, all refused (every 127/8 address is this host's loopback)
        dead = [Multiaddr(f"/ip4/127.0.0.{i}/tcp/{port}") for i in range(2, 52)]
        with anyio.fail_after(60), pytest.raises(DialError) as failure:
            await a.connect(stranger_id(), dead)
        text = str(failure.value)
        named = [addr for addr in dead if f"dial {addr} " in text]
        assert len(named) == MAX_REPORTED_ERRORS, text
        assert text.endswith(f"(+{len(dead) - MAX_REPORTED_ERRORS} more)"), text
        assert a._pending_dials == {}
