"""The connection manager: keeps the number of open connections between water marks and closes
connections nobody uses, in the manner of go-libp2p's connmgr.

Over the high-water mark it closes connections down to the low one, choosing those whose peer
is not protected (not in the routing table), that carry no stream and are past their grace
period, longest idle first. Apart from that, an unprotected connection without a stream for
`idle_timeout` is closed. Protected peers are never closed here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import anyio

from shardroute import limits
from shardroute.clock import Clock
from shardroute.identity.peer_id import PeerId
from shardroute.net.connections import ConnectionRegistry
from shardroute.net.muxer import MuxedConnection

log = logging.getLogger(__name__)

SWEEP_INTERVAL = 5.0


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionManagerLimits:
    low_water: int = limits.CONNMGR_LOW_WATER
    high_water: int = limits.CONNMGR_HIGH_WATER
    grace: float = limits.CONNMGR_GRACE
    idle_timeout: float = limits.CONNECTION_IDLE_TIMEOUT

    def __post_init__(self) -> None:
        if not 0 < self.low_water <= self.high_water:
            raise ValueError("connection manager needs 0 < low_water <= high_water")


class ConnectionManager:
    def __init__(
        self,
        connections: ConnectionRegistry,
        clock: Clock,
        protected: Callable[[PeerId], bool],
        manager_limits: ConnectionManagerLimits | None = None,
    ) -> None:
        self.connections = connections
        self.clock = clock
        self.protected = protected
        self.limits = manager_limits or ConnectionManagerLimits()
        self._first_seen: dict[MuxedConnection, float] = {}
        self._idle_since: dict[MuxedConnection, float] = {}

    async def run(self) -> None:
        while True:
            await anyio.sleep(SWEEP_INTERVAL)
            await self.sweep()

    def _observe(self, now: float) -> list[MuxedConnection]:
        live = [c for c in self.connections.all() if not c.closed]
        present = set(live)
        for book in (self._first_seen, self._idle_since):
            for gone in [c for c in book if c not in present]:
                del book[gone]
        for conn in live:
            self._first_seen.setdefault(conn, now)
            if conn.streams:
                self._idle_since.pop(conn, None)
            else:
                self._idle_since.setdefault(conn, now)
        return live

    def _closable(self, conn: MuxedConnection, now: float) -> bool:
        return (
            conn in self._idle_since
            and now - self._first_seen[conn] >= self.limits.grace
            and not self.protected(conn.remote_peer)
        )

    async def sweep(self) -> int:
        """One pass: trim over the high-water mark, close idle connections; how many closed."""
        now = self.clock.monotonic()
        live = self._observe(now)
        doomed: dict[MuxedConnection, str] = {}
        if len(live) > self.limits.high_water:
            excess = len(live) - self.limits.low_water
            idle_first = sorted(
                (c for c in live if self._closable(c, now)), key=lambda c: self._idle_since[c]
            )
            for conn in idle_first[:excess]:
                doomed[conn] = "connection manager: over the high-water mark"
        for conn in live:
            if (
                conn not in doomed
                and self._closable(conn, now)
                and now - self._idle_since[conn] >= self.limits.idle_timeout
            ):
                doomed[conn] = "idle"
        for conn, reason in doomed.items():
            log.debug("closing connection to %s: %s", conn.remote_peer, reason)
            await conn.close(reason)
        return len(doomed)
