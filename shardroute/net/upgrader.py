"""Turning a raw TCP stream into a secure channel ready for Yamux, in either role:
multistream `/noise`, the Noise XX handshake, multistream `/yamux/1.0.0`."""

from __future__ import annotations

from shardroute.identity.keys import Ed25519PrivateKey
from shardroute.identity.peer_id import PeerId
from shardroute.net.negotiate import handle_protocol, select_protocol
from shardroute.net.secure import RawStream, SecureChannel, secure_inbound, secure_outbound

NOISE_PROTOCOL = "/noise"
YAMUX_PROTOCOL = "/yamux/1.0.0"


class Prefixed:
    """A byte stream that first yields bytes already read past a negotiation."""

    def __init__(self, raw: RawStream, prefix: bytes = b"") -> None:
        self._raw = raw
        self._prefix = prefix

    async def receive(self, max_bytes: int = 65536) -> bytes:
        if self._prefix:
            chunk, self._prefix = self._prefix[:max_bytes], self._prefix[max_bytes:]
            return chunk
        return await self._raw.receive(max_bytes)

    async def send(self, item: bytes) -> None:
        await self._raw.send(item)

    async def aclose(self) -> None:
        await self._raw.aclose()


async def upgrade(
    raw: RawStream,
    identity: Ed25519PrivateKey,
    *,
    initiator: bool,
    expected_peer: PeerId | None = None,
) -> tuple[SecureChannel, bytes]:
    """Secure and negotiate the muxer; returns the channel and the plaintext already read past
    the muxer's negotiation (the first Yamux frames, if the peer pipelined them)."""
    if initiator:
        _, early = await select_protocol(Prefixed(raw), [NOISE_PROTOCOL])
        channel = await secure_outbound(Prefixed(raw, early), identity, expected_peer)
        _, rest = await select_protocol(channel, [YAMUX_PROTOCOL])
    else:
        _, early = await handle_protocol(Prefixed(raw), [NOISE_PROTOCOL])
        channel = await secure_inbound(Prefixed(raw, early), identity)
        _, rest = await handle_protocol(channel, [YAMUX_PROTOCOL])
    return channel, rest + channel.take_buffered()
