"""A store that cannot write (SQLite refuses every write: SQLITE_READONLY), seen from the DHT
server over real streams on 127.0.0.1: inbound ADD_PROVIDERs and PUT_VALUEs are refused and
counted as `store/writes` refusals, the kad stream and connection stay up and keep answering
reads, and writes are taken again once the store heals."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from shardroute import limits
from shardroute.app import App
from shardroute.errors import StreamReset
from shardroute.kad.fairness import Rate, RequestLimiter
from shardroute.kad.messages import (
    KadMessage,
    MessageType,
    PeerInfo,
    ValueRecord,
    decode_message,
    encode_message,
)
from shardroute.net.muxer import MuxedStream
from shardroute.protocol.varint import LengthPrefixedReader, frame
from shardroute.store.database import SqliteStore
from tests.support.nodes import address, loopback_app
from tests.support.records import pk_record

pytestmark = pytest.mark.anyio


def key(i: int) -> bytes:
    return b"\x12\x20" + i.to_bytes(32, "big")


def counter(app: App, family: str, *labels: str) -> float:
    value: float = getattr(app.metrics, family).labels(*labels)._value.get()
    return value


def add_provider(sender: App, k: bytes) -> bytes:
    me = PeerInfo(sender.peer_id, tuple(sender.host.listen_addrs))
    message = KadMessage(type=MessageType.ADD_PROVIDER, key=k, provider_peers=(me,))
    return frame(encode_message(message))


def get_providers(k: bytes) -> bytes:
    return frame(encode_message(KadMessage(type=MessageType.GET_PROVIDERS, key=k)))


FIND_NODE = frame(encode_message(KadMessage(type=MessageType.FIND_NODE, key=key(99))))


async def answer(stream: MuxedStream, reader: LengthPrefixedReader) -> KadMessage:
    with anyio.fail_after(10):
        while (body := reader.next_message()) is None:
            reader.receive_data(await stream.receive())
    return decode_message(body)


async def held(store: SqliteStore, k: bytes, now: float) -> list[object]:
    return [r.provider for r in await store.providers.get_providers(k, now, 10)]


async def test_inbound_writes_are_refused_and_counted_while_reads_go_on(tmp_path: Path) -> None:
    store = await SqliteStore.open(tmp_path, max_providers_per_key=20)
    async with loopback_app(storage=store) as target, loopback_app() as sender:
        await sender.node.connect(address(target))
        conn = sender.host.connection(target.peer_id)
        assert conn is not None
        stream = await sender.host.new_stream(target.peer_id, [target.dht.config.protocol_id])
        reader = LengthPrefixedReader(limits.KAD_MAX_MESSAGE)
        # before the fault: a record is stored
        await stream.send(add_provider(sender, key(0)) + get_providers(key(0)))
        reply = await answer(stream, reader)
        assert [p.peer_id for p in reply.provider_peers] == [sender.peer_id]

        await store.db.set_query_only(True)
        # an ADD_PROVIDER, then reads, pipelined on the same stream
        await stream.send(add_provider(sender, key(1)) + get_providers(key(0)) + FIND_NODE)
        reply = await answer(stream, reader)
        assert reply.type is MessageType.GET_PROVIDERS
        assert [p.peer_id for p in reply.provider_peers] == [sender.peer_id]
        assert (await answer(stream, reader)).type is MessageType.FIND_NODE
        assert counter(target, "resource_refusals_total", "store", "writes") == 1
        assert counter(target, "dht_requests_received_total", "ADD_PROVIDER", "rejected") == 1
        assert await held(store, key(1), target.clock.wall()) == []
        # a run of pipelined ADD_PROVIDERs is refused as a whole and counted per request
        await stream.send(b"".join(add_provider(sender, key(10 + i)) for i in range(5)) + FIND_NODE)
        assert (await answer(stream, reader)).type is MessageType.FIND_NODE
        assert counter(target, "dht_requests_received_total", "ADD_PROVIDER", "rejected") == 6
        # one refusal per batch written (the run arrives in one batch or in several)
        writes = counter(target, "resource_refusals_total", "store", "writes")
        assert 2 <= writes <= 6

        # a PUT_VALUE, which has an answer, is refused by resetting its stream only
        pk_key, pk_value = pk_record()
        put = KadMessage(
            type=MessageType.PUT_VALUE, key=pk_key, record=ValueRecord(pk_key, pk_value)
        )
        other = await sender.host.new_stream(target.peer_id, [target.dht.config.protocol_id])
        await other.send(frame(encode_message(put)))
        with pytest.raises(StreamReset):
            await answer(other, LengthPrefixedReader(limits.KAD_MAX_MESSAGE))
        assert counter(target, "resource_refusals_total", "store", "writes") == writes + 1
        assert counter(target, "dht_requests_received_total", "PUT_VALUE", "rejected") == 1
        assert await store.values.get(pk_key) is None

        # the first stream and the connection are still up and answering
        await stream.send(get_providers(key(0)))
        assert [p.peer_id for p in (await answer(stream, reader)).provider_peers] == [
            sender.peer_id
        ]
        assert sender.host.connection(target.peer_id) is conn and not conn.closed
        report = await sender.dht.get_closest_peers(b"still serving")
        assert [p.peer_id for p in report.peers] == [target.peer_id]

        # healed: the same stream's writes are taken again
        await store.db.set_query_only(False)
        await stream.send(add_provider(sender, key(1)) + get_providers(key(1)))
        reply = await answer(stream, reader)
        assert [p.peer_id for p in reply.provider_peers] == [sender.peer_id]
        await other_put_accepted(sender, target, put)
        assert await store.values.get(pk_key) is not None
        assert counter(target, "resource_refusals_total", "store", "writes") == writes + 1
        assert await held(store, key(0), target.clock.wall()) == [sender.peer_id]  # kept


async def other_put_accepted(sender: App, target: App, put: KadMessage) -> None:
    stream = await sender.host.new_stream(target.peer_id, [target.dht.config.protocol_id])
    await stream.send(frame(encode_message(put)))
    reply = await answer(stream, LengthPrefixedReader(limits.KAD_MAX_MESSAGE))
    assert reply.type is MessageType.PUT_VALUE


async def test_a_peer_over_its_rate_is_reset_even_when_the_store_refuses_its_records(
    tmp_path: Path,
) -> None:
    """A run of ADD_PROVIDERs whose last is over the sender's rate, on a store that cannot
    write: the records within the rate are refused by the store (counted), and the one over
    the rate still resets the stream, as it does on a healthy store."""
    store = await SqliteStore.open(tmp_path, max_providers_per_key=20)
    async with loopback_app(storage=store) as target, loopback_app() as sender:
        await sender.node.connect(address(target))
        target.dht.handler.limiter = RequestLimiter(
            lambda: 0.0, {MessageType.ADD_PROVIDER: Rate(1.0, 2.0)}
        )
        await store.db.set_query_only(True)
        stream = await sender.host.new_stream(target.peer_id, [target.dht.config.protocol_id])
        await stream.send(b"".join(add_provider(sender, key(20 + i)) for i in range(3)))
        with pytest.raises(StreamReset), anyio.fail_after(10):
            while True:
                await stream.receive()
        assert counter(target, "resource_refusals_total", "peer", "kad_requests") == 1
        assert counter(target, "resource_refusals_total", "store", "writes") >= 1
        conn = sender.host.connection(target.peer_id)
        assert conn is not None and not conn.closed
