"""The resource manager's budgets and Yamux's bounded output, on real hosts over real TCP on
127.0.0.1: each budget refuses the newest work, leaves what runs alone, and is counted in
`shardroute_resource_refusals_total{scope,resource}`."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager

import anyio
import anyio.abc
import anyio.lowlevel
import pytest
from anyio.abc import SocketAttribute
from multiaddr import Multiaddr

from shardroute import limits
from shardroute.addrs import parse_multiaddr, with_p2p
from shardroute.errors import (
    ConnectionClosed,
    ResourceLimitExceeded,
    ShardrouteError,
    StreamReset,
)
from shardroute.identity.keys import Ed25519PrivateKey
from shardroute.identity.peer_id import PeerId
from shardroute.net.host import Host, HostLimits
from shardroute.net.io import READ_CHUNK
from shardroute.net.muxer import Direction, MuxedConnection, MuxedStream
from shardroute.net.resources import ResourceLimits, address_key, group_key
from shardroute.net.upgrader import upgrade
from shardroute.obs.metrics import Metrics, MetricsAdapter
from shardroute.protocol.multistream import MULTISTREAM_ID, encode_line
from shardroute.protocol.yamux import YamuxSession

pytestmark = pytest.mark.anyio

LOOPBACK = parse_multiaddr("/ip4/127.0.0.1/tcp/0")
ECHO = "/test/echo/1.0.0"
HOLD = "/test/hold/1.0.0"
SINK = "/test/sink/1.0.0"
BLOB = "/test/blob/1.0.0"
KIB = limits.KIB
MIB = limits.MIB


def new_host(**kwargs: object) -> Host:
    return Host(Ed25519PrivateKey.generate(), listen_addrs=[LOOPBACK], **kwargs)  # type: ignore[arg-type]


def metered_host(resources: ResourceLimits, metrics: Metrics, **host_limits: float) -> Host:
    return new_host(
        host_limits=HostLimits(resources=resources, **host_limits),  # type: ignore[arg-type]
        metrics=MetricsAdapter(metrics),
    )


def full_addr(host: Host) -> Multiaddr:
    return with_p2p(host.listen_addrs[0], host.peer_id)


def port_of(host: Host) -> int:
    return int(host.listen_addrs[0].value_for_protocol("tcp"))


def refused(metrics: Metrics, scope: str, resource: str) -> float:
    value = metrics.registry.get_sample_value(
        "shardroute_resource_refusals_total", {"scope": scope, "resource": resource}
    )
    return value or 0.0


def all_refusals(metrics: Metrics) -> dict[tuple[str, str], float]:
    return {
        (s.labels["scope"], s.labels["resource"]): s.value
        for family in metrics.registry.collect()
        if family.name == "shardroute_resource_refusals"
        for s in family.samples
        if s.name.endswith("_total") and s.value
    }


async def until(predicate: Callable[[], bool], what: str, seconds: float = 5.0) -> None:
    with anyio.fail_after(seconds):
        while not predicate():  # noqa: ASYNC110 (a poll: the state is the host's)
            await anyio.sleep(0.01)
    assert predicate(), what


async def refused_dial(dialer: Host, victim: Host) -> None:
    """A dial the victim refuses: it fails, or the connection it made is closed at once."""
    try:
        conn = await dialer.dial(full_addr(victim))
    except ShardrouteError:
        return
    with anyio.fail_after(5):
        await conn.wait_closed()


async def echo_handler(stream: MuxedStream) -> None:
    try:
        while True:
            await stream.send(await stream.receive())
    except anyio.EndOfStream:
        await stream.aclose()


class Sink:
    """Holds each stream unread until `gate` opens, then reads it all and answers its size."""

    def __init__(self) -> None:
        self.gate = anyio.Event()
        self.entered = 0

    async def __call__(self, stream: MuxedStream) -> None:
        self.entered += 1
        await self.gate.wait()
        got = 0
        try:
            while True:
                got += len(await stream.receive())
        except anyio.EndOfStream:
            pass
        await stream.send(str(got).encode())
        await stream.aclose()


async def send_unread(sender: Host, victim: Host, size: int) -> MuxedStream:
    stream = await sender.new_stream(victim.peer_id, [SINK])
    await stream.send(b"\x5a" * size)
    await stream.send_eof()
    return stream


async def answer(stream: MuxedStream) -> int:
    with anyio.fail_after(10):
        return int(await stream.receive())


async def reset_seen(stream: MuxedStream) -> None:
    with anyio.fail_after(5):
        with pytest.raises(StreamReset):
            while True:
                await stream.receive()


# ------------------------------------------------------------------------ connections


async def test_inbound_and_outbound_connections_are_counted_apart() -> None:
    metrics = Metrics()
    budget = ResourceLimits(
        connections=8, inbound_connections=1, outbound_connections=1, reserved_connections=0
    )
    async with AsyncExitStack() as stack:
        victim = await stack.enter_async_context(metered_host(budget, metrics))
        first, second, dialed, dialed_too = [
            await stack.enter_async_context(new_host()) for _ in range(4)
        ]
        await first.dial(full_addr(victim))
        assert await first.ping(victim.peer_id)
        # The inbound budget is spent: the next inbound connection is refused and counted.
        await refused_dial(second, victim)
        assert refused(metrics, "system", "inbound_connections") == 1
        assert victim.connection(second.peer_id) is None
        # An outbound dial of ours still goes out: the two are counted apart.
        await victim.dial(full_addr(dialed))
        assert await victim.ping(dialed.peer_id)
        assert (victim.resources.inbound, victim.resources.outbound) == (1, 1)
        # Now the outbound budget is spent too: our next dial is refused before it starts ...
        with pytest.raises(ResourceLimitExceeded):
            await victim.dial(full_addr(dialed_too))
        assert refused(metrics, "system", "outbound_connections") == 1
        # ... and a full outbound budget does not stop an inbound peer once a slot is free.
        await first.disconnect(victim.peer_id)
        await until(lambda: victim.resources.inbound == 0, "the inbound slot freed")
        await second.dial(full_addr(victim))
        assert await second.ping(victim.peer_id)
        assert await victim.ping(dialed.peer_id)
        assert all_refusals(metrics) == {
            ("system", "inbound_connections"): 1,
            ("system", "outbound_connections"): 1,
        }


async def test_routing_table_peers_and_our_own_dials_keep_a_reserve() -> None:
    metrics = Metrics()
    budget = ResourceLimits(connections=3, reserved_connections=1)
    async with AsyncExitStack() as stack:
        victim = await stack.enter_async_context(metered_host(budget, metrics))
        strangers = [await stack.enter_async_context(new_host()) for _ in range(3)]
        table_peer, dialed = [await stack.enter_async_context(new_host()) for _ in range(2)]
        victim.resources.protected = lambda peer: peer == table_peer.peer_id
        for stranger in strangers[:2]:
            await stranger.dial(full_addr(victim))
            assert await stranger.ping(victim.peer_id)
        # Inbound strangers stop short of the reserve.
        await refused_dial(strangers[2], victim)
        assert refused(metrics, "system", "connections") == 1
        assert victim.connection(strangers[2].peer_id) is None
        # A routing-table peer takes the reserved slot.
        await table_peer.dial(full_addr(victim))
        assert await table_peer.ping(victim.peer_id)
        assert victim.resources.inbound == 3
        # So does a dial of ours, once the table peer has gone.
        await table_peer.disconnect(victim.peer_id)
        await until(lambda: victim.resources.inbound == 2, "the table peer's slot freed")
        await victim.dial(full_addr(dialed))
        assert await victim.ping(dialed.peer_id)
        assert refused(metrics, "system", "connections") == 1
        # Every slot taken: a stranger is refused before its handshake.
        await refused_dial(strangers[2], victim)
        assert refused(metrics, "system", "connections") == 2
        for stranger in strangers[:2]:
            assert await stranger.ping(victim.peer_id)


# ------------------------------------------------------------------------ streams


async def test_inbound_streams_of_one_protocol_are_capped_per_peer() -> None:
    metrics = Metrics()
    sink = Sink()
    async with (
        metered_host(ResourceLimits(inbound_streams_per_protocol=2), metrics) as victim,
        new_host() as peer,
        new_host() as other,
    ):
        victim.set_stream_handler(SINK, sink)
        victim.set_stream_handler(ECHO, echo_handler)
        for host in (peer, other):
            await host.dial(full_addr(victim))
            await host.wait_identified(victim.peer_id)
        held = [await send_unread(peer, victim, 10) for _ in range(2)]
        await until(lambda: sink.entered == 2, "two streams served")
        # The third stream of the protocol is refused, and counted ...
        extra = await send_unread(peer, victim, 10)
        await reset_seen(extra)
        assert refused(metrics, "protocol", "inbound_streams") == 1
        assert sink.entered == 2
        # ... while another protocol of the same peer, and another peer, are served.
        echo = await peer.new_stream(victim.peer_id, [ECHO])
        await echo.send(b"still served")
        assert await echo.receive() == b"still served"
        await echo.aclose()
        from_other = await send_unread(other, victim, 10)
        await until(lambda: sink.entered == 3, "the other peer's stream served")
        # The held streams finish; their slots come back.
        sink.gate.set()
        assert [await answer(s) for s in held] == [10, 10]
        assert await answer(from_other) == 10
        again = await send_unread(peer, victim, 10)
        assert await answer(again) == 10
        assert all_refusals(metrics) == {("protocol", "inbound_streams"): 1}


# ------------------------------------------------------------------------ memory


async def test_buffer_memory_of_one_peer_is_capped() -> None:
    metrics = Metrics()
    sink = Sink()
    budget = ResourceLimits(memory_per_peer=64 * KIB)
    async with (
        metered_host(budget, metrics) as victim,
        new_host() as peer,
        new_host() as other,
    ):
        victim.set_stream_handler(SINK, sink)
        for host in (peer, other):
            await host.dial(full_addr(victim))
            await host.wait_identified(victim.peer_id)
        kept = await send_unread(peer, victim, 48 * KIB)
        await until(lambda: victim.resources.memory >= 48 * KIB, "48 KiB buffered")
        # 48 KiB more from the same peer would put it over 64 KiB: that stream is reset.
        over = await send_unread(peer, victim, 48 * KIB)
        await reset_seen(over)
        assert refused(metrics, "peer", "memory") == 1
        # Another peer has a budget of its own.
        from_other = await send_unread(other, victim, 48 * KIB)
        await until(lambda: victim.resources.memory >= 96 * KIB, "the other peer's 48 KiB")
        sink.gate.set()
        # What was taken within the budget is all there.
        assert await answer(kept) == 48 * KIB
        assert await answer(from_other) == 48 * KIB
        await until(lambda: victim.resources.memory == 0, "every buffer given back")
        assert all_refusals(metrics) == {("peer", "memory"): 1}


async def test_buffer_memory_of_all_peers_is_capped() -> None:
    metrics = Metrics()
    sink = Sink()
    budget = ResourceLimits(memory=96 * KIB, memory_per_peer=64 * KIB)
    async with (
        metered_host(budget, metrics) as victim,
        new_host() as first,
        new_host() as second,
    ):
        victim.set_stream_handler(SINK, sink)
        for host in (first, second):
            await host.dial(full_addr(victim))
            await host.wait_identified(victim.peer_id)
        kept = await send_unread(first, victim, 60 * KIB)
        await until(lambda: victim.resources.memory >= 60 * KIB, "60 KiB buffered")
        # Within its own peer budget, but over the global one: refused as the newest work.
        over = await send_unread(second, victim, 60 * KIB)
        await reset_seen(over)
        assert refused(metrics, "system", "memory") == 1
        assert refused(metrics, "peer", "memory") == 0
        sink.gate.set()
        assert await answer(kept) == 60 * KIB
        await until(lambda: victim.resources.memory == 0, "every buffer given back")
        # Once given back, the second peer's bytes are taken.
        again = await send_unread(second, victim, 60 * KIB)
        assert await answer(again) == 60 * KIB
        assert all_refusals(metrics) == {("system", "memory"): 1}


# ------------------------------------------------------------------------ pending upgrades


def test_an_ip_group_is_a_network_and_an_address_key_one_host() -> None:
    assert address_key("10.1.2.3") != address_key("10.1.9.9")
    assert group_key("10.1.2.3") == group_key("10.1.9.9") == "ip4:10.1.0.0/16"
    assert group_key("10.2.0.1") != group_key("10.1.0.1")
    assert address_key("2001:db8:1::1") != address_key("2001:db8:2::1")
    assert group_key("2001:db8:1::1") == group_key("2001:db8:2::1")
    assert group_key("::ffff:10.1.2.3") == group_key("10.1.2.3")
    assert group_key(None) is None and group_key("not an address") is None
    defaults = ResourceLimits()
    assert defaults.pending_upgrades_per_group == limits.MAX_INBOUND_PENDING_PER_IP_GROUP
    # Neither one address nor one network can take every pending slot by default.
    assert defaults.pending_upgrades_per_ip < defaults.pending_upgrades_per_group
    assert defaults.pending_upgrades_per_group < defaults.pending_upgrades


@asynccontextmanager
async def stalled_sockets() -> AsyncIterator[list[anyio.abc.SocketStream]]:
    socks: list[anyio.abc.SocketStream] = []
    try:
        yield socks
    finally:
        for sock in socks:
            await sock.aclose()


async def stall_from(socks: list[anyio.abc.SocketStream], port: int, local: str) -> None:
    """A socket from `local` that connects and then says nothing (a stalled negotiation)."""
    socks.append(await anyio.connect_tcp("127.0.0.1", port, local_host=local))


async def hung_up(sock: anyio.abc.SocketStream) -> None:
    with anyio.fail_after(5):
        try:
            while await sock.receive():
                pass
        except (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionError):
            pass


async def test_pending_upgrades_are_capped_per_address_and_per_ip_group() -> None:
    """Stalled negotiations from 127.5.0.0/16 (one network, several addresses): one address
    gets its share, the network its share, and another network is still served."""
    metrics = Metrics()
    budget = ResourceLimits(
        pending_upgrades=8,
        pending_upgrades_per_ip=2,
        pending_upgrades_per_group=3,
        exempt_loopback=False,  # so 127.x counts as addresses and networks
    )
    async with (
        metered_host(budget, metrics, upgrade_timeout=60.0) as victim,
        stalled_sockets() as socks,
    ):
        port = port_of(victim)

        async def pending(n: int) -> None:
            await until(lambda: victim.resources.pending == n, f"{n} pending")

        await stall_from(socks, port, "127.5.0.2")
        await pending(1)
        await stall_from(socks, port, "127.5.0.2")
        await pending(2)
        # A third from the same address is refused before any handshake work.
        await stall_from(socks, port, "127.5.0.2")
        await hung_up(socks[-1])
        assert refused(metrics, "ip", "pending_upgrades") == 1
        # Another address of the same network gets one more: the network's share is 3.
        await stall_from(socks, port, "127.5.0.3")
        await pending(3)
        await stall_from(socks, port, "127.5.0.3")
        await hung_up(socks[-1])
        assert refused(metrics, "ip_group", "pending_upgrades") == 1
        await stall_from(socks, port, "127.5.0.4")
        await hung_up(socks[-1])
        assert refused(metrics, "ip_group", "pending_upgrades") == 2
        await pending(3)
        # Another network is served meanwhile: a stalled socket, and an honest host.
        await stall_from(socks, port, "127.6.0.2")
        await pending(4)
        async with new_host() as honest:
            await honest.dial(full_addr(victim))
            assert await honest.ping(victim.peer_id)
        await pending(4)
        # One of the network's sockets gives up: its slot is the network's again.
        await socks[0].aclose()
        await pending(3)
        await stall_from(socks, port, "127.5.0.4")
        await pending(4)
        assert all_refusals(metrics) == {
            ("ip", "pending_upgrades"): 1,
            ("ip_group", "pending_upgrades"): 2,
        }


# ------------------------------------------------------------------------ Yamux output


async def test_a_peer_that_reads_nothing_is_cut_off_once_our_queued_output_passes_the_cap() -> None:
    """The attacker sends pings and never reads the pongs. Our socket fills, the pongs queue in
    the session, and past `max_queued_output` the connection is closed: what was queued never
    grew past the cap by more than one read's worth of answers."""
    cap = 64 * KIB
    victim_key, attacker_key = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    victim_id = PeerId.from_public_key(victim_key.public_key)
    served: list[MuxedConnection] = []
    peak = [0]
    ended = anyio.Event()

    async def serve(raw: anyio.abc.SocketStream) -> None:
        raw.extra(SocketAttribute.raw_socket).setsockopt(
            socket.SOL_SOCKET, socket.SO_SNDBUF, 16 * KIB
        )
        channel, plaintext = await upgrade(raw, victim_key, initiator=False)
        conn = MuxedConnection(
            channel,
            direction=Direction.INBOUND,
            remote_addr=parse_multiaddr("/ip4/127.0.0.1/tcp/1"),
            initial_plaintext=plaintext,
            on_stream=lambda stream: stream.refuse(),
            max_queued_output=cap,
            write_timeout=600.0,  # the cap, not the write timeout, is under test
            keepalive_interval=600.0,
        )
        process = conn._process

        def measured(data: bytes) -> None:
            try:
                process(data)
            finally:
                peak[0] = max(peak[0], conn.session.queued_output)

        conn._process = measured  # type: ignore[method-assign]
        served.append(conn)
        try:
            await conn.run()
        finally:
            ended.set()

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, serve)
        port = listener.extra(SocketAttribute.local_port)
        raw = await anyio.connect_tcp("127.0.0.1", port)
        raw.extra(SocketAttribute.raw_socket).setsockopt(
            socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * KIB
        )
        channel, _ = await upgrade(raw, attacker_key, initiator=True, expected_peer=victim_id)
        session = YamuxSession(is_client=True)
        pings = 0
        with anyio.fail_after(30):
            while not ended.is_set():
                for _ in range(2000):
                    session.send_ping()
                try:
                    await channel.send(session.data_to_send())
                except ConnectionClosed:
                    break
                pings += 2000
                await anyio.lowlevel.checkpoint()
            await ended.wait()
        await raw.aclose()
        tg.cancel_scope.cancel()
    (conn,) = served
    assert conn.closed
    assert conn.close_reason is not None and "does not read" in conn.close_reason
    # Cut once over the cap, by at most the answers to one read's worth of pings.
    assert cap < peak[0] <= cap + READ_CHUNK
    assert pings * limits.YAMUX_HEADER_LEN > peak[0]  # what was not queued was never answered


async def test_a_stream_to_a_peer_that_stops_reading_queues_at_most_the_high_water_mark() -> None:
    """The attacker opens a stream, grants it a 16 MiB window and never reads again, while our
    handler answers it 12 MiB. The writer waits at YAMUX_OUTPUT_HIGH_WATER instead of queueing
    the whole answer, and the connection is cut once a write made no progress for the write
    timeout; an honest peer is served all along."""
    attacker_key = Ed25519PrivateKey.generate()
    attacker_id = PeerId.from_public_key(attacker_key.public_key)
    outcome: list[str] = []

    async def blob_handler(stream: MuxedStream) -> None:
        try:
            await stream.send(b"\xa5" * (12 * MIB))
            outcome.append("sent")
        finally:
            outcome.append("ended")

    async with (
        new_host(host_limits=HostLimits(write_timeout=1.0)) as victim,
        new_host() as honest,
    ):
        victim.set_stream_handler(BLOB, blob_handler)
        raw = await anyio.connect_tcp("127.0.0.1", port_of(victim))
        raw.extra(SocketAttribute.raw_socket).setsockopt(
            socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * KIB
        )
        channel, _ = await upgrade(raw, attacker_key, initiator=True, expected_peer=victim.peer_id)
        await until(lambda: victim.connection(attacker_id) is not None, "the attacker connected")
        conn = victim.connection(attacker_id)
        assert conn is not None
        peak = [0]
        send_data = conn.session.send_data

        def measured(stream_id: int, data: bytes | bytearray | memoryview) -> int:
            taken = send_data(stream_id, data)
            peak[0] = max(peak[0], conn.session.queued_output)
            return taken

        conn.session.send_data = measured  # type: ignore[method-assign]
        session = YamuxSession(is_client=True)
        stream_id = session.open_stream()
        session.send_data(stream_id, encode_line(MULTISTREAM_ID) + encode_line(BLOB))
        session.acknowledge_received(stream_id, limits.YAMUX_MAX_WINDOW)  # a 16 MiB window
        await channel.send(session.data_to_send())

        await honest.dial(full_addr(victim))
        with anyio.fail_after(20):
            while not conn.closed:
                assert await honest.ping(victim.peer_id)
                await anyio.sleep(0.1)
            await until(lambda: "ended" in outcome, "the handler ended")
        assert conn.close_reason == "write timed out"
        assert peak[0] > limits.YAMUX_OUTPUT_HIGH_WATER // 2
        assert peak[0] <= limits.YAMUX_OUTPUT_HIGH_WATER + limits.YAMUX_MAX_FRAME_PAYLOAD
        assert "sent" not in outcome  # the answer was never all queued
        assert await honest.ping(victim.peer_id)
        await raw.aclose()
