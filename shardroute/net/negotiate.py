"""multistream-select over any byte stream: the thin driver for both roles."""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import Protocol

from shardroute.errors import ProtocolNotSupported
from shardroute.net.io import READ_CHUNK
from shardroute.protocol.multistream import (
    MultistreamInitiator,
    MultistreamResponder,
    ProtocolAgreed,
    ProtocolRejected,
)


class Duplex(Protocol):
    async def send(self, item: bytes) -> None: ...

    async def receive(self, max_bytes: int = ...) -> bytes: ...


async def _negotiate(
    stream: Duplex, core: MultistreamInitiator | MultistreamResponder
) -> ProtocolAgreed | ProtocolRejected:
    """Move bytes between `stream` and the core until it agrees or gives up."""
    while True:
        event = core.next_event()
        out = core.data_to_send()
        if out:
            await stream.send(out)
        if isinstance(event, ProtocolAgreed | ProtocolRejected):
            return event
        core.receive_data(await stream.receive(READ_CHUNK))


async def select_protocol(stream: Duplex, protocols: Sequence[str]) -> tuple[str, bytes]:
    """Propose `protocols` in order; returns the agreed one and bytes that followed its echo."""
    event = await _negotiate(stream, MultistreamInitiator(protocols))
    if isinstance(event, ProtocolRejected):
        raise ProtocolNotSupported(f"peer supports none of {list(protocols)}")
    return event.protocol, event.remaining


async def handle_protocol(
    stream: Duplex, supported: Collection[str] | Callable[[str], bool]
) -> tuple[str, bytes]:
    """Answer proposals until one is supported; returns it and the pipelined bytes after it."""
    event = await _negotiate(stream, MultistreamResponder(supported))
    if isinstance(event, ProtocolRejected):  # a responder only ever agrees or keeps answering
        raise ProtocolNotSupported("negotiation rejected")
    return event.protocol, event.remaining
