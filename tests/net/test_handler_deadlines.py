"""Deadlines of the identify and ping handlers over real streams on 127.0.0.1: a peer that opens
the stream and stalls is cut off at the deadline, and its connection goes on."""

from __future__ import annotations

import anyio
import pytest

from shardroute import limits
from shardroute.app import App
from shardroute.errors import StreamReset
from shardroute.net import ping
from shardroute.net.muxer import MuxedConnection, MuxedStream
from shardroute.protocol.identify import (
    IDENTIFY_PROTOCOL,
    IDENTIFY_PUSH_PROTOCOL,
    IdentifyInfo,
    encode_identify,
)
from shardroute.protocol.varint import frame
from tests.support.nodes import address, loopback_app

pytestmark = pytest.mark.anyio

DEADLINE = 0.5


async def until_ended(stream: MuxedStream) -> type[BaseException]:
    """Read until the stream ends; how it ended (EndOfStream or StreamReset)."""
    with anyio.fail_after(10):
        try:
            while True:
                await stream.receive()
        except (anyio.EndOfStream, StreamReset) as exc:
            return type(exc)


@pytest.mark.parametrize("sent", ["nothing", "half a message"])
async def test_a_stalled_identify_push_is_reset_at_the_deadline(
    monkeypatch: pytest.MonkeyPatch, sent: str
) -> None:
    monkeypatch.setattr(limits, "IDENTIFY_TIMEOUT", DEADLINE)
    async with loopback_app() as target, loopback_app() as stalling:
        await stalling.node.connect(address(target))
        conn = stalling.host.connection(target.peer_id)
        assert conn is not None
        stream = await stalling.host.open_stream_on(conn, [IDENTIFY_PUSH_PROTOCOL])
        if sent == "half a message":
            message = frame(encode_identify(IdentifyInfo(agent_version="stalling")))
            await stream.send(message[: len(message) // 2])
        started = anyio.current_time()
        assert await until_ended(stream) is StreamReset
        assert anyio.current_time() - started >= DEADLINE * 0.9
        assert not conn.closed
        assert len(await stalling.host.ping(target.peer_id)) == 1


async def identify_a_stalling_peer(
    monkeypatch: pytest.MonkeyPatch, target: App, stalling: App
) -> tuple[MuxedConnection, list[MuxedStream]]:
    """Connect `target` to `stalling`, whose identify handler never answers; returns once
    target's identify of the connection ended, with the streams the handler got."""
    monkeypatch.setattr(limits, "IDENTIFY_TIMEOUT", DEADLINE)
    held: list[MuxedStream] = []

    async def never_answer(stream: MuxedStream) -> None:
        held.append(stream)
        await anyio.sleep_forever()

    stalling.host.set_stream_handler(IDENTIFY_PROTOCOL, never_answer)
    started = anyio.current_time()
    await target.node.connect(address(stalling))
    conn = target.host.connection(stalling.peer_id)
    assert conn is not None
    with anyio.fail_after(10):
        await target.host.identify.wait_identified(conn)
    assert anyio.current_time() - started >= DEADLINE * 0.9
    assert held, "the stalling peer's handler never got the identify stream"
    return conn, held


async def test_identify_of_a_peer_that_never_answers_ends_at_the_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Our identify of a new connection gives up when the peer's identify handler stalls; the
    connection stays and serves."""
    async with loopback_app() as target, loopback_app() as stalling:
        conn, _ = await identify_a_stalling_peer(monkeypatch, target, stalling)
        assert not conn.closed
        assert len(await target.host.ping(stalling.peer_id)) == 1


async def test_a_timed_out_identify_does_not_leave_its_stream_open(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with loopback_app() as target, loopback_app() as stalling:
        conn, held = await identify_a_stalling_peer(monkeypatch, target, stalling)
        left = [s for s in conn.streams.values() if s.protocol == IDENTIFY_PROTOCOL]
        assert left == [], "the timed-out identify stream is still open"
        # and the stalling peer sees it reset
        with pytest.raises(StreamReset), anyio.fail_after(5):
            await held[0].receive()
        assert len(await target.host.ping(stalling.peer_id)) == 1


async def test_a_stalled_ping_stream_is_cut_off_at_its_lifetime(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Pings are echoed until the stream's lifetime ends; then the handler closes its side,
    a peer that sent half a payload and stalled included."""
    monkeypatch.setattr(ping, "PING_STREAM_LIFETIME", DEADLINE)
    async with loopback_app() as target, loopback_app() as stalling:
        await stalling.node.connect(address(target))
        conn = stalling.host.connection(target.peer_id)
        assert conn is not None
        stream = await stalling.host.open_stream_on(conn, [ping.PING_PROTOCOL])
        started = anyio.current_time()
        payload = bytes(range(limits.PING_PAYLOAD_LEN))
        await stream.send(payload)
        with anyio.fail_after(10):
            assert await stream.receive_exactly(len(payload)) == payload
        await stream.send(payload[:10])  # and then nothing
        assert await until_ended(stream) in (anyio.EndOfStream, StreamReset)  # cut off
        assert anyio.current_time() - started >= DEADLINE * 0.9
        assert not conn.closed
        assert len(await stalling.host.ping(target.peer_id)) == 1


async def test_a_stalled_ping_stream_holds_nothing_after_its_lifetime(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ping, "PING_STREAM_LIFETIME", DEADLINE)
    async with loopback_app() as target, loopback_app() as stalling:
        await stalling.node.connect(address(target))
        conn = stalling.host.connection(target.peer_id)
        assert conn is not None
        stream = await stalling.host.open_stream_on(conn, [ping.PING_PROTOCOL])
        assert await until_ended(stream) in (anyio.EndOfStream, StreamReset)
        served = target.host.connection(stalling.peer_id)
        assert served is not None
        left = [s for s in served.streams.values() if s.protocol == ping.PING_PROTOCOL]
        assert left == [], "the stalled ping stream is still held by the server"
