"""Joining the network (kad-dht.md §9): the saved table, the bootstrap peers, the join lookups.

A join reconnects the peers of the saved routing table, then dials the bootstrap peers
(`/dnsaddr/` seeds resolved first), then looks up our own ID and one random key in every bucket
farther than the nearest non-empty one. While the table stays empty it tries again with
exponential backoff (1 s doubling to 5 min, jittered); a node with no bootstrap peers waits for
others to dial in.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

import anyio
from multiaddr import Multiaddr

from shardroute import limits
from shardroute.addrs import split_p2p
from shardroute.clock import Clock
from shardroute.errors import ShardrouteError
from shardroute.identity.peer_id import PeerId
from shardroute.kad.dht import Dht
from shardroute.kad.repositories import SavedPeer
from shardroute.maintenance.refresh import deepest_cpl, lookup_buckets
from shardroute.net.dnsaddr import resolve_all

if TYPE_CHECKING:
    import dns.asyncresolver

log = logging.getLogger(__name__)

# Bootstrap retries while the table stays empty: 1 s, doubling, at most 5 min (jittered).
BOOTSTRAP_RETRY_MIN = 1.0
BOOTSTRAP_RETRY_MAX = 300.0


class Connector(Protocol):
    """How bootstrap reaches peers (`node.Node` is one): both wait for identify."""

    async def connect(self, addr: Multiaddr) -> PeerId: ...

    async def connect_peer(self, peer: PeerId, addrs: Sequence[Multiaddr]) -> None: ...


class BootstrapMetrics(Protocol):
    def bootstrap_attempt(self, result: str) -> None: ...

    def refresh_done(self, trigger: str) -> None: ...


class Bootstrapper:
    def __init__(
        self,
        *,
        dht: Dht,
        connector: Connector,
        clock: Clock,
        addrs: Sequence[Multiaddr] = (),
        dns_resolver: dns.asyncresolver.Resolver | None = None,
        metrics: BootstrapMetrics | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.dht = dht
        self.connector = connector
        self.clock = clock
        self.addrs = list(addrs)
        self.dns_resolver = dns_resolver
        self.metrics = metrics
        self.rng = rng or random.Random()

    async def reconnect(self, saved: Sequence[SavedPeer]) -> int:
        """Dial the peers of a saved routing table (most recently seen first); each that
        answers identify as a DHT server re-enters the table. Returns how many answered."""
        reached = 0

        async def one(peer: SavedPeer) -> None:
            nonlocal reached
            try:
                await self.connector.connect_peer(peer.peer, peer.addrs)
                reached += 1
            except ShardrouteError as exc:
                log.info("saved peer %s unreachable: %s", peer.peer, exc)

        async with anyio.create_task_group() as tg:
            for peer in sorted(saved, key=lambda p: p.last_seen, reverse=True):
                tg.start_soon(one, peer)
        return reached

    async def connect_bootstrap(self, addrs: Sequence[Multiaddr] | None = None) -> int:
        """Dial the bootstrap peers (`addrs`, or the configured ones), all at once; returns how
        many answered. Addresses without a /p2p/ peer ID are skipped."""
        resolved = await resolve_all(self.addrs if addrs is None else addrs, self.dns_resolver)
        reached = 0

        async def one(addr: Multiaddr) -> None:
            nonlocal reached
            try:
                await self.connector.connect(addr)
                reached += 1
            except ShardrouteError as exc:
                log.info("bootstrap peer %s unreachable: %s", addr, exc)

        async with anyio.create_task_group() as tg:
            for addr in resolved:
                try:
                    _, peer = split_p2p(addr)
                except ValueError as exc:
                    log.warning("bootstrap address %s skipped: %s", addr, exc)
                    continue
                if peer is None:
                    log.warning("bootstrap address %s has no /p2p/ peer ID; skipped", addr)
                    continue
                tg.start_soon(one, addr)
        return reached

    async def join_lookups(self) -> int:
        """Ourselves, then every bucket farther than the nearest non-empty one (those the
        self-lookup does not fill). Returns the number of lookups."""
        await self.dht.get_closest_peers(self.dht.self_id.raw)
        deepest = min(deepest_cpl(self.dht), limits.KAD_REFRESH_MAX_CPL + 1)
        cpls = list(range(deepest))
        await lookup_buckets(self.dht, cpls, self.rng)
        if self.metrics is not None:
            self.metrics.refresh_done("bootstrap")
        return 1 + len(cpls)

    async def bootstrap(self) -> bool:
        """Connect to the bootstrap peers, then run the join lookups. False if the table is
        still empty."""
        if self.addrs:
            await self.connect_bootstrap()
        if not len(self.dht.routing_table):
            if self.metrics is not None:
                self.metrics.bootstrap_attempt("empty")
            return False
        if self.metrics is not None:
            self.metrics.bootstrap_attempt("joined")
        await self.join_lookups()
        return True

    async def join(self, saved: Sequence[SavedPeer] = ()) -> None:
        """Reconnect to a saved routing table, then bootstrap until the table holds a peer."""
        if saved:
            reached = await self.reconnect(saved)
            log.info("reconnected to %d of %d saved routing-table peers", reached, len(saved))
        delay = BOOTSTRAP_RETRY_MIN
        while not await self.bootstrap():
            if not self.addrs:
                log.info("no bootstrap peers configured; waiting for peers to dial in")
                return
            pause = delay * (0.5 + self.rng.random())
            log.warning("no bootstrap peer reachable; retrying in %.1f s", pause)
            await self.clock.sleep(pause)
            delay = min(delay * 2, BOOTSTRAP_RETRY_MAX)
        log.info("joined: %d peers in the routing table", len(self.dht.routing_table))
