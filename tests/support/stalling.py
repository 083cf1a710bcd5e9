"""A DHT peer that never finishes answering: for tests of deadlines and of clients that give up."""

from __future__ import annotations

import dataclasses

import anyio

from shardroute import limits
from shardroute.errors import ConnectionClosed, StreamReset
from shardroute.net.muxer import MuxedStream
from shardroute.protocol.varint import LengthPrefixedReader


@dataclasses.dataclass
class Silence:
    """A peer that answers provider lookups for `key` a byte at a time and never finishes (an
    overloaded peer). `asked` when such a request came; `released` when its asker gave up on
    it (the next byte found the stream reset)."""

    key: bytes
    asked: anyio.Event = dataclasses.field(default_factory=anyio.Event)
    released: anyio.Event = dataclasses.field(default_factory=anyio.Event)

    async def handler(self, stream: MuxedStream) -> None:
        reader = LengthPrefixedReader(limits.KAD_MAX_MESSAGE)
        while (request := reader.next_message()) is None:
            reader.receive_data(await stream.receive())
        if self.key not in request:
            await stream.reset()
            return
        self.asked.set()
        try:
            await stream.send(b"\xe8\x07")  # a 1000-byte answer is coming...
            while True:
                await anyio.sleep(0.1)
                await stream.send(b"\x00")
        except (StreamReset, ConnectionClosed):
            self.released.set()
