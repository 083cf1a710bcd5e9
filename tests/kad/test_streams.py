"""Bad DHT input over real streams: a clean refusal, a log line, a metric, nothing stored, and
the node keeps serving."""

from __future__ import annotations

from collections import Counter

import anyio
import pytest
from multiaddr import Multiaddr

from shardroute import limits
from shardroute.app import App
from shardroute.errors import StreamReset
from shardroute.kad.messages import (
    KadMessage,
    MessageType,
    PeerInfo,
    decode_message,
    encode_message,
)
from shardroute.net.muxer import MuxedStream
from shardroute.pb import dht_pb2
from shardroute.protocol.varint import LengthPrefixedReader, encode_uvarint, frame
from tests.support.nodes import address, loopback_app
from tests.support.polling import poll

pytestmark = pytest.mark.anyio

PROTOCOL = "/icn/kad/1.0.0"
KEY = bytes.fromhex("1220b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9")


def node() -> App:
    return loopback_app()


async def answer_of(stream: MuxedStream) -> bytes:
    data = b""
    with anyio.fail_after(5):
        try:
            while True:
                data += await stream.receive()
        except anyio.EndOfStream:
            pass
    return data


def bad_count(target: App, reason: str) -> float:
    return target.metrics.bad_messages_total.labels(reason)._value.get()


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (frame(b"\x0a\xff\xff\xff\xff"), "undecodable"),
        (frame(dht_pb2.Message(type=7).SerializeToString()), "undecodable"),  # type: ignore[arg-type]
        (encode_uvarint(5 * 1024 * 1024) + b"\x08", "too_large"),
        (
            frame(encode_message(KadMessage(type=MessageType.GET_PROVIDERS, key=b"k" * 100))),
            "rejected",
        ),
    ],
)
async def test_malformed_requests_reset_the_stream_and_count(payload: bytes, reason: str) -> None:
    async with node() as target, node() as sender:
        await sender.node.connect(address(target))
        stream = await sender.host.new_stream(target.peer_id, [PROTOCOL])
        await stream.send(payload)
        with pytest.raises(StreamReset):
            await answer_of(stream)
        assert bad_count(target, reason) == 1
        # the same peer on a fresh stream is still served
        report = await sender.dht.get_closest_peers(b"still serving")
        assert [p.peer_id for p in report.peers] == [target.peer_id]


async def test_add_provider_naming_another_peer_is_refused_and_not_stored() -> None:
    async with node() as target, node() as sender:
        await sender.node.connect(address(target))
        victim = PeerInfo(target.peer_id, tuple(target.host.listen_addrs))  # not the sender
        forged = KadMessage(type=MessageType.ADD_PROVIDER, key=KEY, provider_peers=(victim,))
        stream = await sender.host.new_stream(target.peer_id, [PROTOCOL])
        await stream.send(frame(encode_message(forged)))
        await stream.send_eof()
        with pytest.raises(StreamReset):
            await answer_of(stream)
        assert await target.dht.providers.count() == 0
        assert bad_count(target, "rejected") == 1


async def test_garbage_closer_peers_never_reach_the_routing_table() -> None:
    async with node() as asker, node() as liar:

        async def lying_handler(stream: MuxedStream) -> None:
            reader = LengthPrefixedReader(4096)
            while (body := reader.next_message()) is None:
                reader.receive_data(await stream.receive())
            reply = dht_pb2.Message(type=decode_message(body).type)  # type: ignore[arg-type]
            for junk_id in (b"", b"\x00\x05abc", b"\x12\x20" + b"x" * 10):
                peer = reply.closerPeers.add()
                peer.id = junk_id
                peer.addrs.append(b"\xff\xfe garbage")
            await stream.send(frame(reply.SerializeToString()))
            await stream.aclose()

        liar.host.set_stream_handler(PROTOCOL, lying_handler)
        await asker.node.connect(address(liar))
        report = await asker.dht.get_closest_peers(b"anything")
        assert [p.peer_id for p in report.peers] == [liar.peer_id]
        assert asker.dht.routing_table.peers() == [liar.peer_id]


@pytest.mark.parametrize("phase", ["idle", "trickle"])
async def test_a_request_that_never_begins_or_never_ends_is_reset_at_its_deadline(
    monkeypatch: pytest.MonkeyPatch, phase: str
) -> None:
    """A stream that sends nothing gets the idle timeout; one that sent half a request gets the
    read timeout from there (a peer cannot hold a buffer open by trickling). Whole requests on
    the same stream before that are answered."""
    monkeypatch.setattr(limits, "KAD_IDLE_TIMEOUT", 1.5)
    monkeypatch.setattr(limits, "KAD_READ_TIMEOUT", 0.5)
    async with node() as target, node() as sender:
        await sender.node.connect(address(target))
        stream = await sender.host.new_stream(target.peer_id, [PROTOCOL])
        request = frame(encode_message(KadMessage(type=MessageType.FIND_NODE, key=KEY)))
        await stream.send(request)
        reader = LengthPrefixedReader(limits.KAD_MAX_MESSAGE)
        with anyio.fail_after(5):
            while reader.next_message() is None:
                reader.receive_data(await stream.receive())
        if phase == "trickle":
            await stream.send(request[: len(request) // 2])
        started = anyio.current_time()
        with pytest.raises(StreamReset), anyio.fail_after(5):
            await stream.receive()
        took = anyio.current_time() - started
        assert (0.5 if phase == "trickle" else 1.5) <= took < (1.4 if phase == "trickle" else 3)


async def test_a_kept_stream_broken_mid_request_is_replaced_and_the_request_answered() -> None:
    """The server answers the first request of each stream and resets the stream on the
    second: the client's second request fails on the kept stream, goes again on a fresh one
    and is answered; the failure is counted against reuse with that peer."""
    async with node() as asker, node() as server:
        streams_seen = 0

        async def one_answer_per_stream(stream: MuxedStream) -> None:
            nonlocal streams_seen
            streams_seen += 1
            reader = LengthPrefixedReader(limits.KAD_MAX_MESSAGE)
            for answered in (True, False):
                while (body := reader.next_message()) is None:
                    reader.receive_data(await stream.receive())
                if not answered:
                    await stream.reset()
                    return
                reply = KadMessage(type=decode_message(body).type, key=KEY)
                await stream.send(frame(encode_message(reply)))

        server.host.set_stream_handler(PROTOCOL, one_answer_per_stream)
        await asker.node.connect(address(server))
        transport, target = asker.kad_transport, PeerInfo(server.peer_id, ())
        request = KadMessage(type=MessageType.FIND_NODE, key=KEY)
        before = stream_uses(asker)
        await transport.request(target, request, timeout=5)
        [kept] = transport.kept.idle_streams(server.peer_id)
        reply = await transport.request(target, request, timeout=5)
        assert reply.type is MessageType.FIND_NODE and streams_seen == 2
        assert transport.kept.failures(server.peer_id) == 1
        assert transport.kept.idle_streams(server.peer_id) not in ([], [kept])
        assert stream_uses(asker) - before == Counter(opened=2, reuse_failed=1)


def stream_uses(app: App) -> Counter[str]:
    counter = app.metrics.kad_streams_total
    return Counter(
        {
            o: int(counter.labels(o)._value.get())
            for o in ("reused", "opened", "reuse_failed", "drained")
        }
    )


def echoing_server(server: App, delays: dict[bytes, float], seen: list[MuxedStream]) -> None:
    """Answer every request on a stream in turn, with its own key, after `delays[key]` seconds
    (forever if the delay is infinite)."""

    async def handler(stream: MuxedStream) -> None:
        seen.append(stream)
        reader = LengthPrefixedReader(limits.KAD_MAX_MESSAGE)
        try:
            while True:
                while (body := reader.next_message()) is None:
                    reader.receive_data(await stream.receive())
                request = decode_message(body)
                await anyio.sleep(delays.get(request.key, 0))
                reply = KadMessage(type=request.type, key=request.key)
                await stream.send(frame(encode_message(reply)))
        except (anyio.EndOfStream, StreamReset):
            pass

    server.host.set_stream_handler(PROTOCOL, handler)


@pytest.mark.parametrize("on", ["a kept stream", "a fresh stream"])
async def test_a_request_abandoned_after_sending_is_drained_and_its_stream_kept(on: str) -> None:
    """A lookup that has its answer cancels its other requests: their replies still come, so
    they are read in the background and the streams kept, not reset and opened again. On a
    fresh stream the protocol's confirmation is still pending when the request is abandoned."""
    slow, later = b"slow" + KEY[4:], b"late" + KEY[4:]
    async with node() as asker, node() as server:
        seen: list[MuxedStream] = []
        echoing_server(server, {slow: 0.3}, seen)
        await asker.node.connect(address(server))
        transport, target = asker.kad_transport, PeerInfo(server.peer_id, ())
        before = stream_uses(asker)
        if on == "a kept stream":
            await transport.request(
                target, KadMessage(type=MessageType.FIND_NODE, key=KEY), timeout=5
            )
        with anyio.move_on_after(0.05) as scope:
            await transport.request(
                target, KadMessage(type=MessageType.FIND_NODE, key=slow), timeout=5
            )
        assert scope.cancelled_caught and transport.kept.idle_streams(server.peer_id) == []
        await poll(
            "the abandoned request's reply read and its stream kept",
            lambda: len(transport.kept.idle_streams(server.peer_id)) == 1,
            seconds=5,
        )
        reply = await transport.request(
            target, KadMessage(type=MessageType.FIND_NODE, key=later), timeout=5
        )
        assert reply.key == later  # in step: the drained reply was not taken for this one
        assert len(seen) == 1
        assert stream_uses(asker) - before == Counter(opened=1, drained=1, reused=1)


@pytest.mark.parametrize(
    ("request_timeout", "grace"), [(0.5, 2.0), (30.0, 0.3)], ids=["deadline", "grace"]
)
async def test_an_abandoned_request_never_answered_is_reset_at_its_deadline_or_grace(
    request_timeout: float, grace: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whichever comes first: the request's own deadline, or the grace after it was abandoned
    (a silent peer does not hold a stream for the whole request timeout)."""
    monkeypatch.setattr(limits, "KAD_DRAIN_GRACE", grace)
    silent = b"mute" + KEY[4:]
    async with node() as asker, node() as server:
        seen: list[MuxedStream] = []
        echoing_server(server, {silent: float("inf")}, seen)
        await asker.node.connect(address(server))
        transport, target = asker.kad_transport, PeerInfo(server.peer_id, ())
        before = stream_uses(asker)
        await transport.request(target, KadMessage(type=MessageType.FIND_NODE, key=KEY), timeout=5)
        with anyio.move_on_after(0.05):
            await transport.request(
                target, KadMessage(type=MessageType.FIND_NODE, key=silent), timeout=request_timeout
            )
        conn = asker.host.connection(server.peer_id)
        assert conn is not None and conn.streams  # still waiting for the answer
        await poll("the abandoned stream reset", lambda: not conn.streams, seconds=3)
        assert transport.kept.idle_streams(server.peer_id) == []
        assert stream_uses(asker) - before == Counter(opened=1)
        # the peer is still asked, on a fresh stream
        await transport.request(target, KadMessage(type=MessageType.FIND_NODE, key=KEY), timeout=5)
        assert len(seen) == 2


async def test_requests_to_one_peer_go_on_one_kept_stream_and_are_counted() -> None:
    async with node() as asker, node() as server:
        await asker.node.connect(address(server))
        transport, target = asker.kad_transport, PeerInfo(server.peer_id, ())
        before = stream_uses(asker)
        for _ in range(3):
            await transport.request(target, KadMessage(type=MessageType.PING), timeout=5)
        used = stream_uses(asker) - before
        assert used["reuse_failed"] == 0 and used["opened"] <= 1
        assert used["opened"] + used["reused"] == 3
        assert len(transport.kept.idle_streams(server.peer_id)) == 1


async def test_kept_streams_are_closed_after_their_idle_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A kept stream holds its connection busy for the connection manager: it goes when idle."""
    monkeypatch.setattr(limits, "KAD_STREAM_IDLE", 0.4)
    async with node() as server, node() as asker:
        asker.kad_transport.kept.idle = 0.4
        await asker.node.connect(address(server))
        target = PeerInfo(server.peer_id, ())
        await asker.kad_transport.request(
            target, KadMessage(type=MessageType.FIND_NODE, key=KEY), timeout=5
        )
        conn = asker.host.connection(server.peer_id)
        assert conn is not None and conn.streams
        await poll(
            "the kept stream closed",
            lambda: not asker.kad_transport.kept.idle_streams(server.peer_id) and not conn.streams,
            seconds=5,
        )


def over_cap_count(app: App) -> float:
    return float(app.metrics.peer_addrs_dropped_total.labels("cap")._value.get())


def crowded_entry(target: dht_pb2.Message.Peer, peer: App, count: int) -> None:
    target.id = peer.peer_id.raw
    target.addrs.extend(
        bytes(Multiaddr(f"/ip4/127.0.{i // 250}.{i % 250 + 1}/tcp/4001").to_bytes())
        for i in range(count)
    )


async def test_addresses_past_the_cap_are_left_unread_and_counted_both_ways() -> None:
    """An ADD_PROVIDER whose provider claims 300 addresses is stored with at most ten, and a
    FIND_NODE answer with such an entry is used the same way; both count the 290 unread."""
    async with node() as target, node() as sender:
        await sender.node.connect(address(target))
        request = dht_pb2.Message(type=dht_pb2.Message.ADD_PROVIDER, key=KEY)
        crowded_entry(request.providerPeers.add(), sender, 300)
        stream = await sender.host.new_stream(target.peer_id, [PROTOCOL])
        await stream.send(frame(request.SerializeToString()))
        await poll("the unread addresses counted", lambda: over_cap_count(target) == 290)

        async def stored() -> bool:
            return await target.dht.providers.count() == 1

        await poll("the record stored", stored)
        (record,) = await target.dht.providers.get_providers(KEY, target.clock.wall(), 20)
        assert 1 <= len(record.addrs) <= limits.KAD_MAX_ADDRS_PER_PEER
        await stream.aclose()

    async with node() as asker, node() as crowded:

        async def crowded_handler(stream: MuxedStream) -> None:
            reader = LengthPrefixedReader(4096)
            while (body := reader.next_message()) is None:
                reader.receive_data(await stream.receive())
            reply = dht_pb2.Message(type=decode_message(body).type)  # type: ignore[arg-type]
            crowded_entry(reply.closerPeers.add(), crowded, 300)
            await stream.send(frame(reply.SerializeToString()))
            await stream.aclose()

        crowded.host.set_stream_handler(PROTOCOL, crowded_handler)
        await asker.node.connect(address(crowded))
        report = await asker.dht.get_closest_peers(b"anything")
        assert [p.peer_id for p in report.peers] == [crowded.peer_id]
        assert over_cap_count(asker) == 290
