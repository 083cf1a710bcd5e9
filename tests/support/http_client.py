"""A small HTTP/1.1 client for tests: h11 in client mode over an anyio socket (TLS optional),
so a test sees the real bytes' framing (chunks, Content-Length) and can stop reading or hang
up mid-answer."""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc
import h11
from anyio.streams.tls import TLSStream


@dataclass
class Reply:
    status: int
    headers: dict[str, str]  # lower-case names; repeated headers joined with ", "
    body: bytes = b""
    chunks: list[bytes] = field(default_factory=list)  # Data events as they arrived

    def json(self) -> Any:
        return json.loads(self.body)

    def lines(self) -> list[Any]:
        return [json.loads(line) for line in self.body.decode().splitlines()]


class Connection:
    def __init__(self, stream: anyio.abc.ByteStream) -> None:
        self.stream = stream
        self.h11 = h11.Connection(h11.CLIENT)

    async def _send(self, event: h11.Event) -> None:
        data = self.h11.send(event)
        if data:
            await self.stream.send(data)

    async def _next(self) -> h11.Event:
        while True:
            event = self.h11.next_event()
            if event is not h11.NEED_DATA:
                assert not isinstance(event, type), event
                return event
            try:
                data = await self.stream.receive()
            except anyio.EndOfStream:
                data = b""
            self.h11.receive_data(data)

    async def send_request(
        self, method: str, path: str, headers: Sequence[tuple[str, str]] = ()
    ) -> None:
        if self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE:
            self.h11.start_next_cycle()
        await self._send(
            h11.Request(method=method, target=path, headers=[("Host", "127.0.0.1"), *headers])
        )
        await self._send(h11.EndOfMessage())

    async def head(self) -> Reply:
        """The response head of the request sent."""
        event = await self._next()
        assert isinstance(event, h11.Response), event
        headers: dict[str, str] = {}
        for name, value in event.headers:
            key = name.decode()
            headers[key] = f"{headers[key]}, {value.decode()}" if key in headers else value.decode()
        return Reply(event.status_code, headers)

    async def chunk(self) -> bytes | None:
        """The next piece of body, or None at its end."""
        event = await self._next()
        if isinstance(event, h11.EndOfMessage):
            return None
        assert isinstance(event, h11.Data), event
        return bytes(event.data)

    async def request(
        self, method: str, path: str, headers: Sequence[tuple[str, str]] = ()
    ) -> Reply:
        await self.send_request(method, path, headers)
        reply = await self.head()
        while (piece := await self.chunk()) is not None:
            reply.chunks.append(piece)
        reply.body = b"".join(reply.chunks)
        return reply


@asynccontextmanager
async def connect(port: int, *, tls: ssl.SSLContext | None = None) -> AsyncIterator[Connection]:
    stream: anyio.abc.ByteStream = await anyio.connect_tcp("127.0.0.1", port)
    try:
        if tls is not None:
            stream = await TLSStream.wrap(stream, ssl_context=tls, hostname="127.0.0.1")
        yield Connection(stream)
    finally:
        await anyio.aclose_forcefully(stream)


async def get(
    port: int,
    path: str,
    headers: Sequence[tuple[str, str]] = (),
    *,
    method: str = "GET",
    tls: ssl.SSLContext | None = None,
) -> Reply:
    """One request on its own connection."""
    with anyio.fail_after(60):
        async with connect(port, tls=tls) as conn:
            return await conn.request(method, path, headers)
