"""Per-peer token buckets per RPC type (`kad.fairness.RequestLimiter`): the limiter alone on an
injected clock, and end to end over real streams on 127.0.0.1, where a peer over its rate for
one RPC type is refused (stream reset, counted) while its other RPC types and other peers are
still served."""

from __future__ import annotations

import anyio
import pytest

from shardroute.app import App
from shardroute.errors import RequestRefused, StreamReset
from shardroute.identity.keys import Ed25519PrivateKey
from shardroute.identity.peer_id import PeerId
from shardroute.kad.fairness import DEFAULT_RATES, Rate, RequestLimiter
from shardroute.kad.messages import (
    KadMessage,
    MessageType,
    PeerInfo,
    decode_message,
    encode_message,
)
from shardroute.net.muxer import MuxedStream
from shardroute.protocol.varint import LengthPrefixedReader, frame
from tests.support.nodes import address, loopback_app

KEY = bytes.fromhex("1220b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9")


class ManualClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def pid() -> PeerId:
    return PeerId.from_public_key(Ed25519PrivateKey.generate().public_key)


# -- the limiter alone -------------------------------------------------------------------------


def test_a_bucket_gives_its_burst_then_refills_at_its_rate_up_to_the_burst() -> None:
    clock = ManualClock()
    limiter = RequestLimiter(clock, {MessageType.GET_PROVIDERS: Rate(per_second=2.0, burst=3.0)})
    peer = pid()
    assert [limiter.allow(peer, MessageType.GET_PROVIDERS) for _ in range(4)] == [
        True,
        True,
        True,
        False,
    ]
    clock.now += 0.25  # half a token: still refused
    assert not limiter.allow(peer, MessageType.GET_PROVIDERS)
    clock.now += 0.25  # the refused attempt did not spend the half it had: now a whole one
    assert limiter.allow(peer, MessageType.GET_PROVIDERS)
    assert not limiter.allow(peer, MessageType.GET_PROVIDERS)
    clock.now += 3600.0  # an hour idle refills to the burst, not beyond
    assert [limiter.allow(peer, MessageType.GET_PROVIDERS) for _ in range(4)] == [
        True,
        True,
        True,
        False,
    ]


def test_buckets_are_per_peer_and_per_message_type() -> None:
    clock = ManualClock()
    rates = {
        MessageType.GET_PROVIDERS: Rate(1.0, 2.0),
        MessageType.FIND_NODE: Rate(1.0, 2.0),
    }
    limiter = RequestLimiter(clock, rates)
    greedy, other = pid(), pid()
    assert limiter.allow(greedy, MessageType.GET_PROVIDERS)
    assert limiter.allow(greedy, MessageType.GET_PROVIDERS)
    assert not limiter.allow(greedy, MessageType.GET_PROVIDERS)
    # the same peer's other type, and another peer's same type, have buckets of their own
    assert limiter.allow(greedy, MessageType.FIND_NODE)
    assert limiter.allow(other, MessageType.GET_PROVIDERS)
    assert limiter.allow(other, MessageType.GET_PROVIDERS)
    assert not limiter.allow(other, MessageType.GET_PROVIDERS)
    # a type without a rate is never limited
    assert all(limiter.allow(greedy, MessageType.PING) for _ in range(1000))


def test_the_least_recently_seen_peers_are_forgotten_beyond_max_peers() -> None:
    clock = ManualClock()
    limiter = RequestLimiter(clock, {MessageType.PING: Rate(0.001, 1.0)}, max_peers=2)
    a, b, c = pid(), pid(), pid()
    assert limiter.allow(a, MessageType.PING)
    assert limiter.allow(b, MessageType.PING)
    assert not limiter.allow(a, MessageType.PING)  # seen again: b is now the oldest
    assert limiter.allow(c, MessageType.PING)  # a third peer: b is forgotten, a kept
    assert not limiter.allow(a, MessageType.PING)
    assert limiter.allow(b, MessageType.PING)  # forgotten: a full bucket (c goes now)
    assert not limiter.allow(a, MessageType.PING)  # a was seen last of the others: kept
    assert limiter.allow(c, MessageType.PING)


def test_every_rpc_the_server_answers_has_a_default_rate() -> None:
    served = {
        MessageType.FIND_NODE,
        MessageType.GET_PROVIDERS,
        MessageType.ADD_PROVIDER,
        MessageType.GET_VALUE,
        MessageType.PUT_VALUE,
        MessageType.PING,
    }
    assert set(DEFAULT_RATES) == served
    assert all(r.per_second > 0 and r.burst >= 1 for r in DEFAULT_RATES.values())


# -- end to end over real streams ----------------------------------------------------------------


async def ask(stream: MuxedStream, reader: LengthPrefixedReader, message: KadMessage) -> KadMessage:
    """One request on `stream` and its answer (StreamReset if the server reset it)."""
    await stream.send(frame(encode_message(message)))
    with anyio.fail_after(10):
        while (body := reader.next_message()) is None:
            reader.receive_data(await stream.receive())
    return decode_message(body)


def counter(app: App, family: str, *labels: str) -> float:
    value: float = getattr(app.metrics, family).labels(*labels)._value.get()
    return value


def limit(target: App, rates: dict[MessageType, Rate]) -> ManualClock:
    """Replace the target's limiter by one with `rates` on a clock the test moves."""
    clock = ManualClock()
    assert isinstance(target.dht.handler.limiter, RequestLimiter)  # the node has one by default
    target.dht.handler.limiter = RequestLimiter(clock, rates)
    return clock


@pytest.mark.anyio
async def test_a_peer_over_its_rate_for_one_rpc_is_refused_while_others_are_served() -> None:
    async with loopback_app() as target, loopback_app() as greedy, loopback_app() as polite:
        protocol = target.dht.config.protocol_id
        for peer in (greedy, polite):
            await peer.node.connect(address(target))
        clock = limit(
            target,
            {MessageType.GET_PROVIDERS: Rate(1.0, 3.0), MessageType.FIND_NODE: Rate(1.0, 50.0)},
        )
        conn = greedy.host.connection(target.peer_id)
        assert conn is not None
        get = KadMessage(type=MessageType.GET_PROVIDERS, key=KEY)
        find = KadMessage(type=MessageType.FIND_NODE, key=KEY)

        stream = await greedy.host.new_stream(target.peer_id, [protocol])
        reader = LengthPrefixedReader(1 << 22)
        for _ in range(3):
            assert (await ask(stream, reader, get)).type is MessageType.GET_PROVIDERS
        with pytest.raises(StreamReset):
            await ask(stream, reader, get)
        assert counter(target, "resource_refusals_total", "peer", "kad_requests") == 1
        assert counter(target, "dht_requests_received_total", "GET_PROVIDERS", "rejected") == 1
        assert counter(target, "dht_requests_received_total", "GET_PROVIDERS", "ok") == 3

        # the same peer's FIND_NODE is served (on a fresh stream, the same connection) ...
        stream = await greedy.host.new_stream(target.peer_id, [protocol])
        reader = LengthPrefixedReader(1 << 22)
        assert (await ask(stream, reader, find)).type is MessageType.FIND_NODE
        # ... but not another GET_PROVIDERS, until its bucket refills
        with pytest.raises(StreamReset):
            await ask(stream, reader, get)
        assert counter(target, "resource_refusals_total", "peer", "kad_requests") == 2
        assert greedy.host.connection(target.peer_id) is conn and not conn.closed

        # another peer's GET_PROVIDERS are served
        stream = await polite.host.new_stream(target.peer_id, [protocol])
        reader = LengthPrefixedReader(1 << 22)
        for _ in range(3):
            assert (await ask(stream, reader, get)).type is MessageType.GET_PROVIDERS

        clock.now += 1.0  # one token back for the greedy peer
        stream = await greedy.host.new_stream(target.peer_id, [protocol])
        reader = LengthPrefixedReader(1 << 22)
        assert (await ask(stream, reader, get)).type is MessageType.GET_PROVIDERS
        assert counter(target, "resource_refusals_total", "peer", "kad_requests") == 2


@pytest.mark.anyio
async def test_pipelined_add_providers_over_the_rate_keep_those_before_and_reset() -> None:
    """A run of ADD_PROVIDERs on one stream is checked request by request: those within the
    rate are stored, the first one over it resets the stream and is counted."""
    async with loopback_app() as target, loopback_app() as sender:
        await sender.node.connect(address(target))
        limit(target, {MessageType.ADD_PROVIDER: Rate(0.001, 2.0)})
        me = PeerInfo(sender.peer_id, tuple(sender.host.listen_addrs))
        keys = [KEY[:-1] + bytes([i]) for i in range(3)]
        adds = b"".join(
            frame(
                encode_message(
                    KadMessage(type=MessageType.ADD_PROVIDER, key=k, provider_peers=(me,))
                )
            )
            for k in keys
        )
        stream = await sender.host.new_stream(target.peer_id, [target.dht.config.protocol_id])
        await stream.send(adds)
        with pytest.raises(StreamReset), anyio.fail_after(10):
            while True:
                await stream.receive()
        now = target.clock.wall()
        held = [len(await target.dht.providers.get_providers(k, now, 5)) for k in keys]
        assert held == [1, 1, 0]
        assert counter(target, "resource_refusals_total", "peer", "kad_requests") == 1
        assert counter(target, "dht_requests_received_total", "ADD_PROVIDER", "rejected") == 1


@pytest.mark.anyio
async def test_the_handler_refuses_over_the_rate_and_reports_it() -> None:
    """The handler alone: RequestRefused, and the refusal goes to its report."""
    async with loopback_app() as target:
        reports: list[tuple[str, str]] = []

        class Reports:
            def resource_refused(self, scope: str, resource: str) -> None:
                reports.append((scope, resource))

        handler = target.dht.handler
        handler.refusals = Reports()
        limit(target, {MessageType.PING: Rate(0.001, 1.0)})
        peer = pid()
        ping = KadMessage(type=MessageType.PING)
        assert await handler.handle(peer, ping) == ping
        with pytest.raises(RequestRefused, match="PING rate"):
            await handler.handle(peer, ping)
        assert reports == [("peer", "kad_requests")]
