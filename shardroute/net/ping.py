"""The libp2p ping protocol (`/ipfs/ping/1.0.0`): echo 32-byte payloads."""

from __future__ import annotations

import os
import time

import anyio

from shardroute.errors import RemoteProtocolError
from shardroute.limits import PING_PAYLOAD_LEN, PING_TIMEOUT
from shardroute.net.muxer import MuxedStream

PING_PROTOCOL = "/ipfs/ping/1.0.0"
# go-libp2p ends a ping stream after 30 s; we bound inbound ones the same way.
PING_STREAM_LIFETIME = 30.0


async def handle_ping(stream: MuxedStream) -> None:
    """Echo every 32-byte payload until the opener closes its side, or reset the stream at
    its lifetime (as go does: closing our side alone would leave a stalled opener holding it)."""
    with anyio.move_on_after(PING_STREAM_LIFETIME) as lifetime:
        try:
            while True:
                payload = await stream.receive_exactly(PING_PAYLOAD_LEN)
                await stream.send(payload)
        except anyio.EndOfStream:
            pass
    if lifetime.cancelled_caught:
        await stream.reset()
    else:
        await stream.aclose()


async def ping_round_trips(
    stream: MuxedStream,
    count: int,
    *,
    timeout: float = PING_TIMEOUT,  # noqa: ASYNC109
) -> list[float]:
    """Send `count` pings on an open ping stream; returns each round-trip time in seconds."""
    rtts: list[float] = []
    for _ in range(count):
        payload = os.urandom(PING_PAYLOAD_LEN)
        with anyio.fail_after(timeout):
            started = time.perf_counter()
            await stream.send(payload)
            echoed = await stream.receive_exactly(PING_PAYLOAD_LEN)
            rtts.append(time.perf_counter() - started)
        if echoed != payload:
            raise RemoteProtocolError("ping reply does not echo the payload")
    await stream.aclose()
    return rtts
