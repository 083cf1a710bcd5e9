"""The connection manager of real hosts on 127.0.0.1: water marks and the idle timeout, with the
manager's clock a `FakeClock` the test moves and its sweeps made by the test, not by time."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import AsyncExitStack

import anyio
import pytest

from shardroute.addrs import parse_multiaddr, with_p2p
from shardroute.clock import FakeClock
from shardroute.identity.keys import Ed25519PrivateKey
from shardroute.identity.peer_id import PeerId
from shardroute.net import connection_manager
from shardroute.net.connection_manager import ConnectionManagerLimits
from shardroute.net.host import Host, HostLimits
from shardroute.net.muxer import MuxedConnection, MuxedStream

pytestmark = pytest.mark.anyio

LOOPBACK = parse_multiaddr("/ip4/127.0.0.1/tcp/0")
HOLD = "/test/hold/1.0.0"


@pytest.fixture(autouse=True)
def no_background_sweeps(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # Only the test sweeps, at the fake times it chooses.
    monkeypatch.setattr(connection_manager, "SWEEP_INTERVAL", 1e6)
    yield


def new_host(**kwargs: object) -> Host:
    return Host(Ed25519PrivateKey.generate(), listen_addrs=[LOOPBACK], **kwargs)  # type: ignore[arg-type]


def managed_host(clock: FakeClock, manager: ConnectionManagerLimits) -> Host:
    host = new_host(host_limits=HostLimits(connection_manager=manager))
    host.connection_manager.clock = clock
    return host


async def connect_all(victim: Host, peers: Iterable[Host]) -> dict[PeerId, MuxedConnection]:
    """Each of `peers` dials `victim`; the victim's side of each connection, once identified."""
    addr = parse_multiaddr(str(with_p2p(victim.listen_addrs[0], victim.peer_id)))
    conns = {}
    for peer in peers:
        await peer.dial(addr)
        await peer.wait_identified(victim.peer_id)
        with anyio.fail_after(5):
            await victim.wait_identified(peer.peer_id)
        conn = victim.connection(peer.peer_id)
        assert conn is not None
        conns[peer.peer_id] = conn
    return conns


class Holder:
    """A handler that keeps each peer's streams open until that peer is let go."""

    def __init__(self) -> None:
        self.gates: dict[PeerId, anyio.Event] = {}

    def gate(self, peer: PeerId) -> anyio.Event:
        return self.gates.setdefault(peer, anyio.Event())

    async def __call__(self, stream: MuxedStream) -> None:
        await self.gate(stream.remote_peer).wait()
        await stream.aclose()


async def hold_stream(peer: Host, victim: Host) -> MuxedStream:
    """A stream `peer` keeps open to `victim`, once the victim's side holds it."""
    stream = await peer.new_stream(victim.peer_id, [HOLD])
    await stream.send(b"hold")
    conn = victim.connection(peer.peer_id)
    assert conn is not None
    with anyio.fail_after(5):
        while not any(s.protocol == HOLD for s in conn.streams.values()):  # noqa: ASYNC110
            await anyio.sleep(0.01)
    return stream


async def finish(stream: MuxedStream) -> None:
    """Both sides done with a held stream (the holder's gate was opened)."""
    with anyio.fail_after(5):
        with pytest.raises(anyio.EndOfStream):
            await stream.receive()
    await stream.aclose()


async def quiet(conns: Iterable[MuxedConnection], busy: Iterable[MuxedConnection] = ()) -> None:
    """Until identify and its pushes are done: no stream on `conns` for a few polls, and a
    stream on each of `busy`."""
    idle, held = list(conns), list(busy)
    with anyio.fail_after(10):
        stable = 0
        while stable < 5:
            await anyio.sleep(0.05)
            ok = all(not c.streams for c in idle) and all(c.streams for c in held)
            stable = stable + 1 if ok else 0


def open_to(host: Host) -> set[PeerId]:
    return {c.remote_peer for c in host.all_connections() if not c.closed}


async def test_over_the_high_water_mark_idle_unprotected_connections_go_first() -> None:
    """Six peers against low 3 / high 4: within the grace nothing is closed; past it the three
    longest idle unprotected connections are, down to the low mark, while the routing-table
    peer, the peer with an open stream and the most recently idle peer keep theirs."""
    clock = FakeClock()
    holder = Holder()
    async with AsyncExitStack() as stack:
        victim = await stack.enter_async_context(
            managed_host(
                clock,
                ConnectionManagerLimits(low_water=3, high_water=4, grace=10.0, idle_timeout=1e6),
            )
        )
        victim.set_stream_handler(HOLD, holder)
        peers = [await stack.enter_async_context(new_host()) for _ in range(6)]
        table_peer, busy, idle_a, idle_b, idle_c, late = peers
        victim.resources.protected = lambda peer: peer == table_peer.peer_id
        conns = await connect_all(victim, peers)
        busy_stream = await hold_stream(busy, victim)
        late_stream = await hold_stream(late, victim)
        held = [conns[busy.peer_id], conns[late.peer_id]]
        await quiet([conns[p.peer_id] for p in (table_peer, idle_a, idle_b, idle_c)], held)

        # Six open, over the high mark, but every connection is within its grace period.
        assert await victim.connection_manager.sweep() == 0
        assert open_to(victim) == {p.peer_id for p in peers}

        # `late` finishes its stream: idle from now on, later than the others.
        holder.gate(late.peer_id).set()
        await finish(late_stream)
        clock.advance(5.0)
        await quiet([conns[p.peer_id] for p in peers if p is not busy], [conns[busy.peer_id]])
        assert await victim.connection_manager.sweep() == 0  # still within the grace
        clock.advance(15.0)
        assert await victim.connection_manager.sweep() == 3

        trimmed = {idle_a.peer_id, idle_b.peer_id, idle_c.peer_id}
        for peer in (idle_a, idle_b, idle_c):
            conn = conns[peer.peer_id]
            assert conn.closed
            assert conn.close_reason == "connection manager: over the high-water mark"
        kept = {table_peer.peer_id, busy.peer_id, late.peer_id}
        assert open_to(victim) == kept
        # The trimmed peers see their connections end; the kept ones still work.
        with anyio.fail_after(5):
            for peer in (idle_a, idle_b, idle_c):
                while victim.peer_id in open_to(peer):  # noqa: ASYNC110
                    await anyio.sleep(0.02)
        for peer in (table_peer, busy, late):
            assert await peer.ping(victim.peer_id)
        assert {p.peer_id for p in peers} - trimmed == kept

        # At the low mark nothing more goes, however idle: trimming only starts over the high.
        holder.gate(busy.peer_id).set()
        await finish(busy_stream)
        clock.advance(1000.0)
        assert await victim.connection_manager.sweep() == 0
        assert open_to(victim) == kept


async def test_a_connection_idle_for_the_timeout_is_closed() -> None:
    """Under the low mark: an unprotected connection without streams for idle_timeout is
    closed; the routing-table peer's is not, and a stream resets the idle time."""
    clock = FakeClock()
    holder = Holder()
    async with AsyncExitStack() as stack:
        victim = await stack.enter_async_context(
            managed_host(
                clock,
                ConnectionManagerLimits(low_water=50, high_water=60, grace=0.0, idle_timeout=30.0),
            )
        )
        victim.set_stream_handler(HOLD, holder)
        stranger, table_peer, busy = [await stack.enter_async_context(new_host()) for _ in range(3)]
        victim.resources.protected = lambda peer: peer == table_peer.peer_id
        conns = await connect_all(victim, (stranger, table_peer, busy))
        busy_stream = await hold_stream(busy, victim)
        await quiet([conns[stranger.peer_id], conns[table_peer.peer_id]], [conns[busy.peer_id]])

        assert await victim.connection_manager.sweep() == 0  # t=0: idle from now
        clock.advance(29.0)
        assert await victim.connection_manager.sweep() == 0  # not yet
        clock.advance(1.0)
        assert await victim.connection_manager.sweep() == 1  # t=30: the stranger's goes
        gone = conns[stranger.peer_id]
        assert gone.closed and gone.close_reason == "idle"
        assert open_to(victim) == {table_peer.peer_id, busy.peer_id}
        with anyio.fail_after(5):
            while victim.peer_id in open_to(stranger):  # noqa: ASYNC110
                await anyio.sleep(0.02)

        # The busy peer's stream ends at t=40: it is idle from then, and closed at t=70.
        clock.advance(10.0)
        holder.gate(busy.peer_id).set()
        await finish(busy_stream)
        await quiet([conns[busy.peer_id]])
        assert await victim.connection_manager.sweep() == 0
        clock.advance(29.0)
        assert await victim.connection_manager.sweep() == 0
        clock.advance(1.0)
        assert await victim.connection_manager.sweep() == 1
        assert open_to(victim) == {table_peer.peer_id}
        # The protected peer, idle for 1,000 s more, keeps its connection.
        clock.advance(1000.0)
        assert await victim.connection_manager.sweep() == 0
        assert await table_peer.ping(victim.peer_id)
