"""Small pieces every driver shares: OS-error mapping and pumping a sans-IO core over a stream."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

import anyio
import anyio.abc

from shardroute.errors import ConnectionClosed

READ_CHUNK = 256 * 1024

# What a closed or broken transport raises under anyio; callers see ConnectionClosed.
TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (
    anyio.EndOfStream,
    anyio.ClosedResourceError,
    anyio.BrokenResourceError,
    ConnectionError,
    OSError,
)


@contextmanager
def map_transport_errors(what: str) -> Iterator[None]:
    try:
        yield
    except TRANSPORT_ERRORS as exc:
        raise ConnectionClosed(f"{what}: {type(exc).__name__}: {exc}".rstrip(": ")) from exc


class NeedsBytes(Protocol):
    def data_to_send(self) -> bytes: ...

    def receive_data(self, data: bytes) -> None: ...


class ByteStreamLike(Protocol):
    async def send(self, item: bytes) -> None: ...

    async def receive(self, max_bytes: int = ...) -> bytes: ...


async def flush(stream: ByteStreamLike, core: NeedsBytes) -> None:
    out = core.data_to_send()
    if out:
        await stream.send(out)


async def feed(stream: ByteStreamLike, core: NeedsBytes) -> None:
    """Read one chunk from the stream into the core; EOF becomes ConnectionClosed."""
    data = await stream.receive(READ_CHUNK)
    core.receive_data(data)
