"""The DHT server's handle deadline over real streams: a request whose handling takes longer
than `KAD_HANDLE_TIMEOUT` (a store that hangs) is cut, its stream reset and counted
(`shardroute_dht_requests_received_total{result="timeout"}`), and the connection goes on
serving."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import anyio
import pytest

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
from shardroute.obs.metrics import Metrics
from shardroute.protocol.varint import LengthPrefixedReader, frame
from tests.support.nodes import address, loopback_app
from tests.support.records import pk_record

pytestmark = pytest.mark.anyio

KEY = bytes.fromhex("1220b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9")
DEADLINE = 0.5


class Stall:
    """An async stand-in that never returns; remembers that it was entered and cancelled."""

    def __init__(self) -> None:
        self.entered = anyio.Event()
        self.cancelled = False

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.entered.set()
        try:
            await anyio.sleep_forever()
        finally:
            self.cancelled = True


def stall(target: App, kind: MessageType, monkeypatch: pytest.MonkeyPatch) -> Stall:
    """Make the store behind `kind` hang."""
    hang = Stall()
    handler = target.dht.handler
    if kind is MessageType.GET_PROVIDERS:
        monkeypatch.setattr(handler.providers, "get_providers", hang)
    elif kind is MessageType.GET_VALUE:
        monkeypatch.setattr(handler.values, "get", hang)
    else:
        monkeypatch.setattr(handler.intake, "submit_many", hang)
    return hang


def timed_out(metrics: Metrics, kind: MessageType) -> float:
    value = metrics.registry.get_sample_value(
        "shardroute_dht_requests_received_total", {"type": kind.name, "result": "timeout"}
    )
    return value or 0.0


def request(kind: MessageType, sender: App) -> KadMessage:
    if kind is MessageType.ADD_PROVIDER:
        me = PeerInfo(sender.peer_id, tuple(sender.host.listen_addrs))
        return KadMessage(type=kind, key=KEY, provider_peers=(me,))
    if kind is MessageType.GET_VALUE:
        return KadMessage(type=kind, key=b"/pk/" + KEY)
    return KadMessage(type=kind, key=KEY)


@pytest.mark.parametrize(
    "kind", [MessageType.GET_PROVIDERS, MessageType.GET_VALUE, MessageType.ADD_PROVIDER]
)
async def test_a_handler_that_takes_too_long_is_cut_and_the_connection_kept(
    monkeypatch: pytest.MonkeyPatch, kind: MessageType
) -> None:
    monkeypatch.setattr(limits, "KAD_HANDLE_TIMEOUT", DEADLINE)
    metrics = Metrics()
    async with loopback_app(metrics=metrics) as target, loopback_app() as sender:
        await sender.node.connect(address(target))
        conn = sender.host.connection(target.peer_id)
        assert conn is not None
        hang = stall(target, kind, monkeypatch)
        protocol = target.dht.config.protocol_id
        stream = await sender.host.new_stream(target.peer_id, [protocol])
        await stream.send(frame(encode_message(request(kind, sender))))
        with anyio.fail_after(10):
            await hang.entered.wait()
        started = anyio.current_time()
        # Without the deadline nothing would ever come back on this stream.
        with pytest.raises(StreamReset), anyio.fail_after(10):
            while True:
                await stream.receive()
        assert anyio.current_time() - started >= DEADLINE * 0.9
        assert hang.cancelled  # the handler was cut, not left running
        assert timed_out(metrics, kind) == 1  # and counted, for the operator
        # the connection is kept and serves the next request
        assert sender.host.connection(target.peer_id) is conn and not conn.closed
        fresh = await sender.host.new_stream(target.peer_id, [protocol])
        await fresh.send(frame(encode_message(KadMessage(type=MessageType.FIND_NODE, key=KEY))))
        reader = LengthPrefixedReader(limits.KAD_MAX_MESSAGE)
        with anyio.fail_after(10):
            while (body := reader.next_message()) is None:
                reader.receive_data(await fresh.receive())
        assert decode_message(body).type is MessageType.FIND_NODE
        assert not conn.closed


async def test_a_handler_within_its_deadline_is_answered(monkeypatch: pytest.MonkeyPatch) -> None:
    """The deadline is for each request: one that waits a while, but less, is answered."""
    monkeypatch.setattr(limits, "KAD_HANDLE_TIMEOUT", 2.0)
    async with loopback_app() as target, loopback_app() as sender:
        await sender.node.connect(address(target))
        real = target.dht.handler.providers.get_providers

        async def slow(key: bytes, now: float, limit: int) -> Sequence[Any]:
            await anyio.sleep(0.5)
            return await real(key, now, limit)

        monkeypatch.setattr(target.dht.handler.providers, "get_providers", slow)
        stream = await sender.host.new_stream(target.peer_id, [target.dht.config.protocol_id])
        reader = LengthPrefixedReader(limits.KAD_MAX_MESSAGE)
        for _ in range(5):  # 2.5 s in all: each request has a deadline of its own
            await stream.send(
                frame(encode_message(KadMessage(type=MessageType.GET_PROVIDERS, key=KEY)))
            )
            with anyio.fail_after(10):
                while (body := reader.next_message()) is None:
                    reader.receive_data(await stream.receive())
            assert decode_message(body).type is MessageType.GET_PROVIDERS


async def test_an_answer_the_peer_never_reads_is_cut_at_the_write_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A peer that sends requests and never reads the answers: once its receive window is
    full, the server's write waits, and at `WRITE_TIMEOUT` the stream is reset (the serving
    task does not wait forever), while the connection goes on."""
    monkeypatch.setattr(limits, "WRITE_TIMEOUT", DEADLINE)
    metrics = Metrics()
    async with loopback_app(metrics=metrics) as target, loopback_app() as sender:
        await sender.node.connect(address(target))
        conn = sender.host.connection(target.peer_id)
        assert conn is not None
        target.dht.handler.limiter = None  # many requests from one peer are the point here
        pk_key, pk_value = pk_record()
        await target.dht.values.put(pk_key, pk_value, target.clock.wall())
        get = frame(encode_message(KadMessage(type=MessageType.GET_VALUE, key=pk_key)))
        count = 2000  # about 800 KB of answers, over the 256 KiB window
        stream = await sender.host.new_stream(target.peer_id, [target.dht.config.protocol_id])
        await stream.send(get * count)
        await anyio.sleep(4 * DEADLINE)  # not reading: the server's write is stuck meanwhile
        reader = LengthPrefixedReader(limits.KAD_MAX_MESSAGE)
        answered = 0
        with pytest.raises(StreamReset), anyio.fail_after(10):
            while True:
                reader.receive_data(await stream.receive())
                while reader.next_message() is not None:
                    answered += 1
        assert 0 < answered < count
        assert timed_out(metrics, MessageType.GET_VALUE) == 1
        assert sender.host.connection(target.peer_id) is conn and not conn.closed
        report = await sender.dht.get_closest_peers(b"still serving")
        assert [p.peer_id for p in report.peers] == [target.peer_id]
