"""Noise over a raw byte stream: the handshake driver and the encrypted channel it yields."""

from __future__ import annotations

from typing import Protocol

from shardroute.identity.keys import Ed25519PrivateKey, PublicKey
from shardroute.identity.peer_id import PeerId
from shardroute.net.io import READ_CHUNK, map_transport_errors
from shardroute.protocol.noise import HandshakeCompleted, NoiseHandshake, NoiseTransport


class RawStream(Protocol):
    async def send(self, item: bytes) -> None: ...

    async def receive(self, max_bytes: int = ...) -> bytes: ...

    async def aclose(self) -> None: ...


class SecureChannel:
    """A byte stream whose bytes travel in Noise transport frames."""

    def __init__(
        self,
        raw: RawStream,
        transport: NoiseTransport,
        *,
        remote_peer: PeerId,
        remote_public_key: PublicKey,
        early_ciphertext: bytes = b"",
    ) -> None:
        self.raw = raw
        self.remote_peer = remote_peer
        self.remote_public_key = remote_public_key
        self._transport = transport
        self._plain = bytearray()
        if early_ciphertext:
            transport.receive_data(early_ciphertext)
            self._plain += transport.decrypt_available()

    async def receive(self, max_bytes: int = READ_CHUNK) -> bytes:
        while not self._plain:
            with map_transport_errors("secure channel read"):
                data = await self.raw.receive(READ_CHUNK)
            self._transport.receive_data(data)
            self._plain += self._transport.decrypt_available()
        chunk = bytes(self._plain[:max_bytes])
        del self._plain[:max_bytes]
        return chunk

    def take_buffered(self) -> bytes:
        """Plaintext already decrypted but not yet read (handed to the muxer)."""
        rest = bytes(self._plain)
        self._plain.clear()
        return rest

    async def send(self, data: bytes) -> None:
        frames = self._transport.encrypt(data)
        with map_transport_errors("secure channel write"):
            await self.raw.send(frames)

    async def aclose(self) -> None:
        await self.raw.aclose()


async def secure_outbound(
    raw: RawStream, identity: Ed25519PrivateKey, expected_peer: PeerId | None
) -> SecureChannel:
    return await _handshake(
        NoiseHandshake(initiator=True, identity=identity, expected_peer=expected_peer), raw
    )


async def secure_inbound(raw: RawStream, identity: Ed25519PrivateKey) -> SecureChannel:
    return await _handshake(NoiseHandshake(initiator=False, identity=identity), raw)


async def _handshake(core: NoiseHandshake, raw: RawStream) -> SecureChannel:
    with map_transport_errors("noise handshake"):
        while True:
            event = core.next_event()
            out = core.data_to_send()  # next_event may have written our next message
            if out:
                await raw.send(out)
            if isinstance(event, HandshakeCompleted):
                return SecureChannel(
                    raw,
                    event.transport,
                    remote_peer=event.remote_peer,
                    remote_public_key=event.remote_public_key,
                    early_ciphertext=event.remaining,
                )
            core.receive_data(await raw.receive(READ_CHUNK))
