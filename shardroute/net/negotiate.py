"""multistream-select over any byte stream: the thin driver for both roles, and the lazy
initiator that sends its proposal with the first message instead of waiting a round trip for
the answer (go-multistream's lazy client does the same for single-protocol streams)."""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import Protocol

from shardroute.errors import MultistreamError, ProtocolNotSupported
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


class Pushback(Duplex, Protocol):
    def unread(self, data: bytes) -> None: ...


class LazyProtocol:
    """One proposal, sent with the first write; its answer read before the first read.

    Used where we propose one protocol the peer is known to speak (it said so in identify):
    the request costs one round trip instead of two. A peer that refuses after all makes the
    first read (or `confirm`) raise ProtocolNotSupported.
    """

    def __init__(self, stream: Pushback, protocol: str) -> None:
        self._stream = stream
        self.protocol = protocol
        self._core = MultistreamInitiator([protocol])
        self._pending = self._core.data_to_send()
        self._confirmed = False

    def take_proposal(self) -> bytes:
        """The proposal, once: the caller writes it ahead of its first message."""
        pending, self._pending = self._pending, b""
        return pending

    async def confirm(self) -> None:
        """Read the peer's answer to the proposal (once); bytes past it stay readable."""
        if self._confirmed:
            return
        if self._pending:
            await self._stream.send(self.take_proposal())
        while True:
            event = self._core.next_event()
            if isinstance(event, ProtocolAgreed):
                self._confirmed = True
                self._stream.unread(event.remaining)
                return
            if isinstance(event, ProtocolRejected):
                raise ProtocolNotSupported(f"peer does not speak {self.protocol}")
            data = await self._stream.receive(READ_CHUNK)
            if not data:
                raise MultistreamError("stream ended during negotiation")
            self._core.receive_data(data)
