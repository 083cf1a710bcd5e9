"""Dialing a peer: which of its addresses to try, in what order, and how an attempt's failure
becomes a `DialError` that says what went wrong where.

Candidates are ranked (the idea of go-libp2p's dial ranker): addresses in a scope we have an
address in ourselves first (a private address is only reachable from its own network), then
public ones, then the rest; IPv4 before IPv6 within a rank. They are tried with staggered
concurrency: the next starts when the one before fails or after `stagger` seconds, whichever
is first, and the first that reaches the right peer wins. A refusal, a timeout or a peer-ID
mismatch on one address moves on to the next; the dial fails only when all have.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import anyio
from multiaddr import Multiaddr

from shardroute.errors import DialError, DialPeerMismatch, PeerIdMismatch, ShardrouteError
from shardroute.identity.keys import Ed25519PrivateKey
from shardroute.identity.peer_id import PeerId
from shardroute.net.addresses import Scope, scope_of
from shardroute.net.io import TRANSPORT_ERRORS
from shardroute.net.secure import SecureChannel
from shardroute.net.transport import dial_tcp
from shardroute.net.upgrader import upgrade

log = logging.getLogger(__name__)

# The next address is tried this long after the one before started, if that one has not
# finished (go's ranker waits 250 ms between TCP addresses of one family).
DIAL_STAGGER = 0.25
# Attempts in flight at once for one peer.
MAX_PARALLEL_ATTEMPTS = 4
# Per-address errors kept in a dial failure's message.
MAX_REPORTED_ERRORS = 8


@dataclass(frozen=True, slots=True)
class Upgraded:
    """A dialed address, secured and with the muxer agreed."""

    addr: Multiaddr
    channel: SecureChannel
    plaintext: bytes  # already read past the muxer negotiation


def rank(candidates: Sequence[Multiaddr], own_scopes: set[Scope]) -> list[Multiaddr]:
    """The order to try `candidates` in, best first (stable within a rank)."""

    def key(addr: Multiaddr) -> tuple[int, int]:
        scope = scope_of(addr)
        if scope in own_scopes and scope is not Scope.PUBLIC:
            tier = 0  # on a network we are on
        elif scope is Scope.PUBLIC:
            tier = 1
        else:
            tier = 2  # another private network, or someone else's loopback
        return tier, 1 if "/ip6/" in str(addr) else 0

    return sorted(dict.fromkeys(candidates), key=key)


class Dialer:
    def __init__(
        self,
        identity: Ed25519PrivateKey,
        *,
        dial_timeout: float,
        upgrade_timeout: float,
        own_scopes: Callable[[], set[Scope]] = set,
        stagger: float = DIAL_STAGGER,
        on_handshake_failure: Callable[[BaseException], None] | None = None,
    ) -> None:
        self.identity = identity
        self.dial_timeout = dial_timeout
        self.upgrade_timeout = upgrade_timeout
        self.own_scopes = own_scopes
        self.stagger = stagger
        self.on_handshake_failure = on_handshake_failure

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
            if self.on_handshake_failure is not None and not isinstance(
                exc, anyio.get_cancelled_exc_class()
            ):
                self.on_handshake_failure(exc)
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
        """The first of `candidates` (ranked) that reaches `peer`."""
        ordered = rank(candidates, self.own_scopes())
        if not ordered:
            raise DialError(f"no dialable TCP address known for {peer}")
        winner: list[Upgraded] = []
        errors: list[DialError] = []
        limiter = anyio.CapacityLimiter(MAX_PARALLEL_ATTEMPTS)

        async with anyio.create_task_group() as tg:

            async def attempt(addr: Multiaddr, failed: anyio.Event) -> None:
                try:
                    async with limiter:
                        dialed = await self.dial_addr(addr, peer)
                except DialError as exc:
                    errors.append(exc)
                    failed.set()
                    return
                if winner:  # another address got there first
                    with anyio.move_on_after(1, shield=True):
                        await dialed.channel.aclose()
                    return
                winner.append(dialed)
                tg.cancel_scope.cancel()

            for addr in ordered:
                failed = anyio.Event()
                tg.start_soon(attempt, addr, failed)
                with anyio.move_on_after(self.stagger):
                    await failed.wait()
        if winner:
            return winner[0]
        mismatch = next((e for e in errors if isinstance(e, DialPeerMismatch)), None)
        shown = "; ".join(str(e) for e in errors[:MAX_REPORTED_ERRORS])
        more = len(errors) - MAX_REPORTED_ERRORS
        message = f"could not dial {peer}: {shown}" + (f" (+{more} more)" if more > 0 else "")
        if mismatch is not None and len(errors) == 1:
            raise DialPeerMismatch(message) from mismatch
        raise DialError(message)
