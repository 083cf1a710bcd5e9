"""Dialing a peer: which of its addresses to try, and turning each attempt's failure into a
`DialError` that says what went wrong where."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import anyio
from multiaddr import Multiaddr

from shardroute.errors import (
    DialError,
    DialPeerMismatch,
    PeerIdMismatch,
    ShardrouteError,
)
from shardroute.identity.keys import Ed25519PrivateKey
from shardroute.identity.peer_id import PeerId
from shardroute.net.io import TRANSPORT_ERRORS
from shardroute.net.secure import SecureChannel
from shardroute.net.transport import dial_tcp
from shardroute.net.upgrader import upgrade


@dataclass(frozen=True, slots=True)
class Upgraded:
    """A dialed address, secured and with the muxer agreed."""

    addr: Multiaddr
    channel: SecureChannel
    plaintext: bytes  # already read past the muxer negotiation


class Dialer:
    def __init__(
        self, identity: Ed25519PrivateKey, *, dial_timeout: float, upgrade_timeout: float
    ) -> None:
        self.identity = identity
        self.dial_timeout = dial_timeout
        self.upgrade_timeout = upgrade_timeout

    async def dial_addr(self, addr: Multiaddr, expected: PeerId | None) -> Upgraded:
        """One address: TCP, then the upgrade; with `expected`, the peer must prove that ID."""
        raw = await dial_tcp(addr, self.dial_timeout)
        try:
            with anyio.fail_after(self.upgrade_timeout):
                channel, plaintext = await upgrade(
                    raw, self.identity, initiator=True, expected_peer=expected
                )
        except BaseException as exc:
            with anyio.move_on_after(1, shield=True):
                await raw.aclose()
            if isinstance(exc, PeerIdMismatch):
                raise DialPeerMismatch(f"dial {addr}: {exc}") from exc
            if isinstance(exc, ShardrouteError):
                raise DialError(f"dial {addr}: handshake failed: {exc}") from exc
            if isinstance(exc, (TimeoutError, *TRANSPORT_ERRORS)):
                reason = str(exc) or type(exc).__name__
                raise DialError(f"dial {addr}: handshake failed: {reason}") from exc
            raise
        return Upgraded(addr, channel, plaintext)

    async def dial_peer(self, peer: PeerId, candidates: Sequence[Multiaddr]) -> Upgraded:
        """The first of `candidates` that reaches `peer`, tried in order."""
        if not candidates:
            raise DialError(f"no dialable TCP address known for {peer}")
        errors: list[str] = []
        for candidate in candidates:
            try:
                return await self.dial_addr(candidate, peer)
            except DialPeerMismatch:
                raise
            except DialError as exc:
                errors.append(str(exc))
        raise DialError(f"could not dial {peer}: " + "; ".join(errors))
