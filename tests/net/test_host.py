"""Two or more real hosts on 127.0.0.1: the whole stack over real TCP sockets."""

from __future__ import annotations

import hashlib
import os

import anyio
import pytest
from multiaddr import Multiaddr

from shardroute.addrs import parse_multiaddr, with_p2p
from shardroute.errors import DialError, DialPeerMismatch, StreamReset
from shardroute.identity.keys import Ed25519PrivateKey
from shardroute.identity.peer_id import PeerId
from shardroute.limits import YAMUX_INITIAL_WINDOW
from shardroute.net.addresses import AnnouncePolicy
from shardroute.net.host import Host, HostLimits
from shardroute.net.muxer import MuxedStream
from shardroute.net.resources import ResourceLimits
from shardroute.net.upgrader import upgrade
from shardroute.protocol.identify import IDENTIFY_PROTOCOL
from shardroute.protocol.multistream import MULTISTREAM_ID, encode_line
from shardroute.protocol.yamux import YamuxSession

pytestmark = pytest.mark.anyio

LOOPBACK = parse_multiaddr("/ip4/127.0.0.1/tcp/0")
ECHO = "/test/echo/1.0.0"
SINK = "/test/sink/1.0.0"


def new_host(**kwargs: object) -> Host:
    return Host(Ed25519PrivateKey.generate(), listen_addrs=[LOOPBACK], **kwargs)  # type: ignore[arg-type]


def full_addr(host: Host) -> str:
    return str(with_p2p(host.listen_addrs[0], host.peer_id))


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def echo_handler(stream: MuxedStream) -> None:
    try:
        while True:
            await stream.send(await stream.receive())
    except anyio.EndOfStream:
        await stream.aclose()


async def test_dial_identify_and_ping_both_ways() -> None:
    async with new_host() as a, new_host() as b:
        conn = await a.dial(parse_multiaddr(full_addr(b)))
        assert conn.remote_peer == b.peer_id
        await a.wait_identified(b.peer_id)
        with anyio.fail_after(5):
            await b.wait_identified(a.peer_id)
        # identify told each side the other's real listen address and protocols
        assert b.listen_addrs[0] in a.peerstore.addrs(b.peer_id, a.clock.monotonic())
        assert a.listen_addrs[0] in b.peerstore.addrs(a.peer_id, b.clock.monotonic())
        assert IDENTIFY_PROTOCOL in a.peerstore.protocols(b.peer_id)
        assert a.peerstore.get(b.peer_id).agent_version.startswith("shardroute/")  # type: ignore[union-attr]
        rtts = await a.ping(b.peer_id, 3)
        assert len(rtts) == 3 and all(r > 0 for r in rtts)
        # the listener reuses the same connection to ping back
        assert len(await b.ping(a.peer_id, 1)) == 1
        assert a.connection_count == 1 and b.connection_count == 1


async def test_wrong_peer_id_fails_the_dial_clearly() -> None:
    async with new_host() as a, new_host() as b:
        stranger = PeerId.from_public_key(Ed25519PrivateKey.generate().public_key)
        addr = with_p2p(b.listen_addrs[0], stranger)
        with pytest.raises(DialPeerMismatch) as info:
            await a.dial(addr)
        assert str(stranger) in str(info.value) and str(b.peer_id) in str(info.value)
        assert a.connection(stranger) is None and a.connection(b.peer_id) is None
        # the listener keeps serving
        assert (await a.dial(parse_multiaddr(full_addr(b)))).remote_peer == b.peer_id


async def test_dial_refused_port_is_a_dial_error() -> None:
    async with new_host() as b:
        addr = full_addr(b)
    async with new_host() as a:
        with pytest.raises(DialError):
            await a.dial(parse_multiaddr(addr))


async def test_64_mib_over_100_concurrent_streams_arrive_byte_exact() -> None:
    total = 64 * 1024 * 1024
    streams = 100
    per_stream = total // streams
    received: dict[int, str] = {}

    async def digest_handler(stream: MuxedStream) -> None:
        h = hashlib.sha256()
        n = 0
        try:
            while True:
                chunk = await stream.receive()
                h.update(chunk)
                n += len(chunk)
        except anyio.EndOfStream:
            pass
        await stream.send(f"{n}:{h.hexdigest()}".encode())
        await stream.aclose()

    # More streams of one protocol, and more unread bytes (100 full windows), than one peer
    # gets by default.
    roomy = HostLimits(
        resources=ResourceLimits(inbound_streams_per_protocol=streams, memory_per_peer=64 << 20)
    )
    async with new_host() as a, new_host(host_limits=roomy) as b:
        b.set_stream_handler(SINK, digest_handler)
        await a.dial(parse_multiaddr(full_addr(b)))

        async def send_one(i: int) -> None:
            payload = hashlib.shake_256(i.to_bytes(4, "big")).digest(per_stream)
            stream = await a.new_stream(b.peer_id, [SINK])
            view = memoryview(payload)
            for off in range(0, len(payload), 100_000):
                await stream.send(view[off : off + 100_000])
            await stream.send_eof()
            answer = b""
            try:
                while True:
                    answer += await stream.receive()
            except anyio.EndOfStream:
                pass
            received[i] = answer.decode()
            assert answer.decode() == f"{per_stream}:{hashlib.sha256(payload).hexdigest()}"

        with anyio.fail_after(120):
            async with anyio.create_task_group() as tg:
                for i in range(streams):
                    tg.start_soon(send_one, i)
        assert len(received) == streams


async def test_slow_reader_makes_the_sender_wait() -> None:
    gate = anyio.Event()
    reader_streams: list[MuxedStream] = []

    async def lazy_handler(stream: MuxedStream) -> None:
        reader_streams.append(stream)
        await gate.wait()
        got = 0
        try:
            while True:
                got += len(await stream.receive())
        except anyio.EndOfStream:
            pass
        await stream.send(str(got).encode())
        await stream.aclose()

    async with new_host() as a, new_host() as b:
        b.set_stream_handler(SINK, lazy_handler)
        await a.dial(parse_multiaddr(full_addr(b)))
        stream = await a.new_stream(b.peer_id, [SINK])
        payload = os.urandom(8 * 1024 * 1024)
        chunk = 64 * 1024
        progress = {"sent": 0}
        done = anyio.Event()

        async def sender() -> None:
            for off in range(0, len(payload), chunk):
                await stream.send(payload[off : off + chunk])
                progress["sent"] = off + chunk
            await stream.send_eof()
            done.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(sender)
            # While nobody reads, the sender gets stuck after about one window.
            with anyio.move_on_after(1.0):
                await done.wait()
            assert not done.is_set()
            assert progress["sent"] <= YAMUX_INITIAL_WINDOW + chunk
            assert len(reader_streams) == 1
            assert len(reader_streams[0]._buffer) <= YAMUX_INITIAL_WINDOW
            # Once the reader drains, the rest flows.
            gate.set()
            with anyio.fail_after(30):
                await done.wait()
                answer = await stream.receive()
        assert int(answer) == len(payload)


async def test_a_peer_that_stops_reading_is_cut_off_after_the_write_timeout() -> None:
    """A peer fills 48 echo streams and never reads its socket again: the echoes stall in the
    kernel's buffers, the connection is closed once a write has waited write_timeout, and an
    honest peer is served all along."""
    attacker = Ed25519PrivateKey.generate()
    attacker_id = PeerId.from_public_key(attacker.public_key)
    async with new_host(host_limits=HostLimits(write_timeout=1.0)) as victim, new_host() as honest:
        victim.set_stream_handler(ECHO, echo_handler)
        port = int(victim.listen_addrs[0].value_for_protocol("tcp"))
        raw = await anyio.connect_tcp("127.0.0.1", port)
        channel, _ = await upgrade(raw, attacker, initiator=True, expected_peer=victim.peer_id)
        session = YamuxSession(is_client=True)
        proposal = encode_line(MULTISTREAM_ID) + encode_line(ECHO)
        payload = os.urandom(YAMUX_INITIAL_WINDOW - len(proposal))
        for _ in range(48):
            stream_id = session.open_stream()
            assert session.send_data(stream_id, proposal + payload) == YAMUX_INITIAL_WINDOW
        await channel.send(session.data_to_send())
        with anyio.fail_after(20):
            while (conn := victim.connections.get(attacker_id)) is None:  # noqa: ASYNC110
                await anyio.sleep(0.02)
            started = anyio.current_time()
            await honest.dial(parse_multiaddr(full_addr(victim)))
            while not conn.closed:
                assert await honest.ping(victim.peer_id)
                await anyio.sleep(0.1)
        assert conn.close_reason == "write timed out"
        assert anyio.current_time() - started >= 1.0
        assert await honest.ping(victim.peer_id)
        await raw.aclose()


async def test_simultaneous_dials_end_with_one_connection() -> None:
    async with new_host() as a, new_host() as b:
        b_addr, a_addr = parse_multiaddr(full_addr(b)), parse_multiaddr(full_addr(a))
        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(a.dial, b_addr)
                tg.start_soon(b.dial, a_addr)
        ca, cb = a.connection(b.peer_id), b.connection(a.peer_id)
        assert ca is not None and cb is not None
        # both ends picked the same underlying connection (same local/remote port pair)
        assert ca.direction != cb.direction
        a.set_stream_handler(ECHO, echo_handler)
        stream = await b.new_stream(a.peer_id, [ECHO])
        await stream.send(b"hello")
        assert await stream.receive() == b"hello"


async def test_streams_a_peer_opens_on_the_losing_duplicate_are_served() -> None:
    """go keeps both connections of a crossed dial and may open streams on either; the one our
    tie-break drops must serve them until they are done, then close."""
    async with new_host() as one, new_host() as two:
        # keep the connection dialed by the smaller ID: `big` dials first and loses
        small, big = sorted((one, two), key=lambda h: h.peer_id.raw)
        small.set_stream_handler(ECHO, echo_handler)
        first = await big.dial(parse_multiaddr(full_addr(small)))
        held = await big.open_stream_on(first, [ECHO])
        await small.dial(big.listen_addrs[0])  # no /p2p/: a second connection, as a crossed dial
        losing = [c for c in small.connections.of_peer(big.peer_id) if c.draining]
        assert len(losing) == 1 and not losing[0].closed
        # big behaves as go: it ignores the tie-break and opens another stream on the loser
        first.draining = False
        late = await big.open_stream_on(first, [ECHO])
        for stream in (held, late):
            await stream.send(b"on the duplicate")
            assert await stream.receive() == b"on the duplicate"
            await stream.aclose()
        # once its streams are done, the duplicate closes (well before the grace runs out)
        with anyio.fail_after(4):
            await losing[0].wait_closed()
        assert small.connection(big.peer_id) is not None


async def test_garbage_peer_is_dropped_and_others_still_served() -> None:
    # A short upgrade timeout so the truncated-handshake case ends quickly.
    async with new_host(host_limits=HostLimits(upgrade_timeout=2.0)) as b:
        b.set_stream_handler(ECHO, echo_handler)
        fds_before = open_fds()
        port = int(str(b.listen_addrs[0]).rsplit("/", 1)[1])
        for junk in (
            b"\x00" * 100,  # a truncated varint: waits for the upgrade timeout
            b"\x13/multistream/1.0.0\n\x07/noise\n" + os.urandom(500),  # a bad Noise message
            os.urandom(3000),
            b"\x13/multistream/1.0.0\n",  # then the peer hangs up mid-negotiation
        ):
            sock = await anyio.connect_tcp("127.0.0.1", port)
            await sock.send(junk)
            if junk.endswith(b"1.0.0\n"):
                await sock.send_eof()
            with anyio.fail_after(20):
                try:
                    while await sock.receive():
                        pass
                except (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionError):
                    pass
            await sock.aclose()
        async with new_host() as a:
            await a.dial(parse_multiaddr(full_addr(b)))
            stream = await a.new_stream(b.peer_id, [ECHO])
            await stream.send(b"still here")
            assert await stream.receive() == b"still here"
        assert b.connection_count <= 1
    assert open_fds() <= fds_before


async def test_shutdown_leaks_no_sockets() -> None:
    before = open_fds()
    async with new_host() as a, new_host() as b:
        await a.dial(parse_multiaddr(full_addr(b)))
        await a.ping(b.peer_id, 1)
    assert open_fds() == before


async def test_identify_push_tells_connected_peers_about_new_and_removed_protocols() -> None:
    async with new_host() as a, new_host() as b:
        events = a.subscribe_identified()
        await a.dial(parse_multiaddr(full_addr(b)))
        await a.wait_identified(b.peer_id)
        with anyio.fail_after(5):
            first = await events.receive()
        assert first.peer == b.peer_id and not first.pushed
        assert first.remote_addr == a.connection(b.peer_id).remote_addr  # type: ignore[union-attr]
        assert ECHO not in first.protocols
        b.set_stream_handler(ECHO, echo_handler)
        with anyio.fail_after(5):
            pushed = await events.receive()
        assert pushed.pushed and ECHO in pushed.protocols
        assert pushed.protocols == a.peerstore.protocols(b.peer_id)
        b.remove_stream_handler(ECHO)
        with anyio.fail_after(5):
            removed = await events.receive()
        assert removed.pushed and ECHO not in removed.protocols
        assert ECHO not in a.peerstore.protocols(b.peer_id)


async def test_connection_limit_refuses_extra_peers_and_keeps_serving() -> None:
    async with new_host(
        host_limits=HostLimits(resources=ResourceLimits(connections=1, reserved_connections=0))
    ) as b:
        b.set_stream_handler(ECHO, echo_handler)
        async with new_host() as a1, new_host() as a2:
            await a1.dial(parse_multiaddr(full_addr(b)))
            with pytest.raises(DialError):
                await a2.dial(parse_multiaddr(full_addr(b)))
            stream = await a1.new_stream(b.peer_id, [ECHO])
            await stream.send(b"ok")
            assert await stream.receive() == b"ok"
            assert b.connection_count == 1


async def test_stream_cap_per_connection() -> None:
    async with new_host(host_limits=HostLimits(max_streams_per_connection=4)) as b:
        gate = anyio.Event()

        async def hold(stream: MuxedStream) -> None:
            await gate.wait()
            await stream.aclose()

        b.set_stream_handler(ECHO, hold)
        async with new_host() as a:
            await a.dial(parse_multiaddr(full_addr(b)))
            await a.wait_identified(b.peer_id)
            opened = [await a.new_stream(b.peer_id, [ECHO]) for _ in range(4)]
            with pytest.raises(StreamReset):  # the fifth is refused by the listener alone
                extra = await a.new_stream(b.peer_id, [ECHO])
                await extra.receive()
            gate.set()
            assert len(opened) == 4 and a.connection(b.peer_id) is not None


async def test_a_peer_claiming_hundreds_of_addresses_is_kept_to_ten_and_counted() -> None:
    class Dropped:
        counts: dict[str, int] = {}

        def peer_addrs_dropped(self, reason: str, count: int) -> None:
            self.counts[reason] = self.counts.get(reason, 0) + count

    dropped = Dropped()
    async with new_host(metrics=dropped) as a, new_host() as liar:
        claims = tuple(Multiaddr(f"/ip4/127.0.{i // 250}.{i % 250}/tcp/4001") for i in range(600))
        liar.addresses.policy = AnnouncePolicy(announce=claims)
        await a.dial(parse_multiaddr(full_addr(liar)))
        await a.wait_identified(liar.peer_id)
        assert len(a.peer_addrs(liar.peer_id)) <= 10 + 1  # ten claims and the dialed address
        assert dropped.counts == {"cap": 590}
