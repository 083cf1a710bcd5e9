"""A shardroute node: the libp2p host with the Kademlia DHT on it, built from settings.

This is where the DHT learns about peers (identify and identify push), where the DHT
protocol handler is installed or removed with the mode, and where bootstrap dials happen.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType

import anyio
import anyio.abc
import anyio.lowlevel
import dns.asyncresolver
from multiaddr import Multiaddr

from shardroute.addrs import parse_multiaddr, split_p2p
from shardroute.clock import Clock, SystemClock
from shardroute.config import Settings
from shardroute.errors import DialError, ShardrouteError
from shardroute.identity.keys import Ed25519PrivateKey
from shardroute.identity.peer_id import PeerId
from shardroute.kad.dht import Dht, DhtConfig, Mode
from shardroute.kad.records import make_default_validator
from shardroute.kad.refresh import Refresher
from shardroute.kad.stores import (
    MemoryProviderStore,
    MemoryValueStore,
    ProviderStore,
    SavedPeer,
    ValueStore,
)
from shardroute.net.dnsaddr import resolve_all
from shardroute.net.host import Host, HostLimits
from shardroute.net.kad_streams import HostKadNetwork, make_server_handler
from shardroute.net.muxer import Direction
from shardroute.net.peerstore import RECENTLY_CONNECTED_ADDR_TTL
from shardroute.obs.metrics import DhtMetricsAdapter, Metrics
from shardroute.protocol.identify import IdentifyInfo

log = logging.getLogger(__name__)

# Bootstrap retries while the table stays empty: 1 s, doubling, at most 5 min (jittered).
BOOTSTRAP_RETRY_MIN = 1.0
BOOTSTRAP_RETRY_MAX = 300.0
# Expired records deleted per statement (a sweep runs as many as it needs, yielding between).
EXPIRY_BATCH = 1000


def dht_config(settings: Settings) -> DhtConfig:
    return DhtConfig(
        protocol_id=settings.protocol,
        k=settings.k,
        alpha=settings.alpha,
        beta=settings.beta,
        request_timeout=settings.request_timeout,
        query_timeout=settings.query_timeout,
        provider_ttl=settings.provider_ttl,
        provider_addr_ttl=settings.provider_addr_ttl,
        mode=settings.mode,
        diversity=settings.diversity_filter,
        diversity_exempt_private=settings.diversity_exempt_private,
    )


class Node:
    def __init__(
        self,
        settings: Settings,
        identity: Ed25519PrivateKey,
        *,
        clock: Clock | None = None,
        metrics: Metrics | None = None,
        providers: ProviderStore | None = None,
        values: ValueStore | None = None,
        dns_resolver: dns.asyncresolver.Resolver | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock or SystemClock()
        self.metrics = metrics or Metrics()
        self.host = Host(
            identity,
            listen_addrs=[parse_multiaddr(a) for a in settings.listen],
            clock=self.clock,
            host_limits=HostLimits(
                max_connections=settings.max_connections,
                max_streams_per_connection=settings.max_streams_per_connection,
            ),
        )
        self.protocol = settings.protocol
        self.network = HostKadNetwork(self.host, self.protocol)
        dht_metrics = DhtMetricsAdapter(self.metrics)
        self.dht = Dht(
            network=self.network,
            config=dht_config(settings),
            providers=providers or MemoryProviderStore(max_per_key=settings.max_providers_per_key),
            values=values or MemoryValueStore(),
            validator=make_default_validator(),
            clock=self.clock,
            peer_addrs=lambda peer: self.host.peerstore.addrs(peer, self.clock.monotonic()),
            metrics=dht_metrics,
        )
        self._server_handler = make_server_handler(self.dht.handler, metrics=self.metrics)
        self.dns_resolver = dns_resolver
        self._rng = random.Random()
        # The addresses join() was given: an emptied table rejoins through them.
        self._bootstrap_addrs: list[Multiaddr] = []
        self.refresher = Refresher(
            self.dht,
            self.clock,
            interval=settings.refresh_interval,
            rejoin=lambda: self.bootstrap(self._bootstrap_addrs),
            metrics=dht_metrics,
        )
        self._export_gauges()
        self._tg: anyio.abc.TaskGroup | None = None

    def _export_gauges(self) -> None:
        """Connection and stream gauges read the host when Prometheus scrapes."""
        host = self.host

        def counter(direction: Direction) -> Callable[[], float]:
            return lambda: float(sum(1 for c in host.all_connections() if c.direction is direction))

        for direction in Direction:
            self.metrics.connections.labels(direction.value).set_function(counter(direction))
        self.metrics.streams.set_function(
            lambda: float(sum(len(c.streams) for c in host.all_connections()))
        )

    @property
    def peer_id(self) -> PeerId:
        return self.host.peer_id

    async def __aenter__(self) -> Node:
        await self.host.__aenter__()
        try:
            await self.dht.__aenter__()
            self._tg = anyio.create_task_group()
            await self._tg.__aenter__()
        except BaseException:
            await self.host.__aexit__(None, None, None)
            raise
        self.host.on_identified(self._identified)
        self.set_mode(self.settings.mode)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._tg is not None
        self._tg.cancel_scope.cancel()
        await self._tg.__aexit__(None, None, None)
        await self.dht.__aexit__(None, None, None)
        await self.host.__aexit__(None, None, None)

    @property
    def mode(self) -> Mode:
        return self.dht.mode

    def set_mode(self, mode: Mode) -> None:
        """Server mode answers and advertises the DHT protocol; client mode does neither.
        The host pushes the new protocol list to connected peers (identify push)."""
        self.dht.set_mode(mode)
        if mode == "server":
            self.host.set_stream_handler(self.protocol, self._server_handler)
        else:
            self.host.remove_stream_handler(self.protocol)

    def _identified(self, peer: PeerId, info: IdentifyInfo, pushed: bool) -> None:
        if self._tg is None:
            return
        protocols = (
            info.protocols if "protocols" in info.present else self.host.peerstore.protocols(peer)
        )
        addrs = self.host.peerstore.addrs(peer, self.clock.monotonic())
        self._tg.start_soon(self._peer_seen, peer, addrs, self.protocol in protocols)

    async def _peer_seen(self, peer: PeerId, addrs: list[Multiaddr], is_server: bool) -> None:
        try:
            await self.dht.peer_seen(peer, addrs, is_server=is_server)
        except ShardrouteError as exc:
            log.debug("routing table update for %s failed: %s", peer, exc)

    async def connect(self, addr: Multiaddr) -> PeerId:
        """Dial a peer (as an operator joining by hand would) and wait for identify."""
        conn = await self.host.dial(addr)
        with anyio.move_on_after(10):
            await self.host.wait_identified(conn.remote_peer)
        # The identify callback runs the admission; let it finish before reporting.
        protocols = self.host.peerstore.protocols(conn.remote_peer)
        addrs = self.host.peerstore.addrs(conn.remote_peer, self.clock.monotonic())
        await self.dht.peer_seen(conn.remote_peer, addrs, is_server=self.protocol in protocols)
        return conn.remote_peer

    def routing_snapshot(self) -> list[SavedPeer]:
        """The routing table with addresses, times in wall-clock seconds, for the durable store."""
        mono, wall = self.clock.monotonic(), self.clock.wall()
        out = []
        for entry in self.dht.routing_table.snapshot():
            addrs = tuple(self.dht.addrs_of(entry.peer))
            useful = None if entry.last_useful is None else wall - (mono - entry.last_useful)
            out.append(SavedPeer(entry.peer, addrs, wall - (mono - entry.last_seen), useful))
        return out

    async def reconnect(self, saved: Sequence[SavedPeer]) -> int:
        """Dial the peers of a saved routing table (most recently seen first); each that
        answers identify as a DHT server re-enters the table. Returns how many answered."""
        now = self.clock.monotonic()
        for peer in saved:
            self.host.peerstore.add_addrs(peer.peer, peer.addrs, RECENTLY_CONNECTED_ADDR_TTL, now)
        reached = 0

        async def one(peer: SavedPeer) -> None:
            nonlocal reached
            try:
                conn = await self.host.connect(peer.peer)
                with anyio.move_on_after(10):
                    await self.host.wait_identified(conn.remote_peer)
                reached += 1
            except ShardrouteError as exc:
                log.info("saved peer %s unreachable: %s", peer.peer, exc)

        async with anyio.create_task_group() as tg:
            for peer in sorted(saved, key=lambda p: p.last_seen, reverse=True):
                tg.start_soon(one, peer)
        return reached

    async def connect_bootstrap(self, addrs: Sequence[Multiaddr]) -> int:
        """Dial the bootstrap peers (/dnsaddr/ names resolved first), all at once; returns
        how many answered. Addresses without a /p2p/ peer ID are skipped."""
        resolved = await resolve_all(addrs, self.dns_resolver)
        reached = 0

        async def one(addr: Multiaddr) -> None:
            nonlocal reached
            try:
                await self.connect(addr)
                reached += 1
            except (DialError, ShardrouteError) as exc:
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

    async def bootstrap(self, addrs: Sequence[Multiaddr]) -> bool:
        """Connect to the bootstrap peers, then look up our own ID and refresh every bucket
        farther than the nearest non-empty one. False if the table is still empty."""
        if addrs:
            await self.connect_bootstrap(addrs)
        if not len(self.dht.routing_table):
            self.metrics.bootstrap_attempts_total.labels("empty").inc()
            return False
        self.metrics.bootstrap_attempts_total.labels("joined").inc()
        await self.refresher.after_join()
        return True

    async def join(self, addrs: Sequence[Multiaddr], saved: Sequence[SavedPeer] = ()) -> None:
        """Reconnect to a saved routing table, then bootstrap; while the table stays empty,
        try again with exponential backoff (1 s doubling to 5 min, jittered)."""
        self._bootstrap_addrs = list(addrs)
        if saved:
            reached = await self.reconnect(saved)
            log.info("reconnected to %d of %d saved routing-table peers", reached, len(saved))
        delay = BOOTSTRAP_RETRY_MIN
        while not await self.bootstrap(addrs):
            if not addrs:
                log.info("no bootstrap peers configured; waiting for peers to dial in")
                return
            pause = delay * (0.5 + self._rng.random())
            log.warning("no bootstrap peer reachable; retrying in %.1f s", pause)
            await self.clock.sleep(pause)
            delay = min(delay * 2, BOOTSTRAP_RETRY_MAX)
        log.info("joined: %d peers in the routing table", len(self.dht.routing_table))

    async def maintain(self, addrs: Sequence[Multiaddr], saved: Sequence[SavedPeer] = ()) -> None:
        """Join, then refresh the table and sweep expired records, until cancelled."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self.sweep_expired)
            await self.join(addrs, saved)
            tg.start_soon(self.refresher.run)

    async def sweep_expired(self) -> None:
        """Delete expired provider records (and values past their age) in bounded batches."""
        while True:
            now = self.clock.wall()
            removed = await _in_batches(self.dht.providers.expire, now)
            await _in_batches(self.dht.values.expire, now - self.dht.config.max_value_age)
            if removed:
                self.metrics.expired_records_total.inc(removed)
                log.info("expired %d provider records", removed)
            await self.clock.sleep(self.settings.expiry_interval)


async def _in_batches(expire: Callable[[float, int], Awaitable[int]], cutoff: float) -> int:
    """Run a bounded `expire(cutoff, batch)` until a batch comes back short; the total."""
    total = 0
    while (removed := await expire(cutoff, EXPIRY_BATCH)) == EXPIRY_BATCH:
        total += removed
        await anyio.lowlevel.checkpoint()
    return total + removed
