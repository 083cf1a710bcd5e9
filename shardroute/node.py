"""A shardroute node: the libp2p host with the Kademlia DHT on it, built from settings.

This is where the DHT learns about peers (identify and identify push), where the DHT
protocol handler is installed or removed with the mode, and where bootstrap dials happen.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from types import TracebackType

import anyio
import anyio.abc
from multiaddr import Multiaddr

from shardroute.addrs import parse_multiaddr, split_p2p
from shardroute.clock import Clock, SystemClock
from shardroute.config import Settings
from shardroute.errors import DialError, ShardrouteError
from shardroute.identity.keys import Ed25519PrivateKey
from shardroute.identity.peer_id import PeerId
from shardroute.kad.dht import Dht, DhtConfig, LookupReport, Mode
from shardroute.kad.records import make_default_validator
from shardroute.kad.stores import (
    MemoryProviderStore,
    MemoryValueStore,
    ProviderStore,
    SavedPeer,
    ValueStore,
)
from shardroute.net.host import Host, HostLimits
from shardroute.net.kad_streams import HostKadNetwork, make_server_handler
from shardroute.net.muxer import Direction
from shardroute.net.peerstore import RECENTLY_CONNECTED_ADDR_TTL
from shardroute.obs.metrics import DhtMetricsAdapter, Metrics
from shardroute.protocol.identify import IdentifyInfo

log = logging.getLogger(__name__)


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
        self.dht = Dht(
            network=self.network,
            config=dht_config(settings),
            providers=providers or MemoryProviderStore(max_per_key=settings.max_providers_per_key),
            values=values or MemoryValueStore(),
            validator=make_default_validator(),
            clock=self.clock,
            peer_addrs=lambda peer: self.host.peerstore.addrs(peer, self.clock.monotonic()),
            metrics=DhtMetricsAdapter(self.metrics),
        )
        self._server_handler = make_server_handler(self.dht.handler, metrics=self.metrics)
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

    async def bootstrap(self, addrs: Sequence[Multiaddr]) -> LookupReport | None:
        """Connect to the given peers, then look up our own ID to fill the nearby buckets."""
        reached = 0
        for addr in addrs:
            _, peer = split_p2p(addr)
            if peer is None:
                log.warning("bootstrap address %s has no /p2p/ peer ID; skipped", addr)
                continue
            try:
                await self.connect(addr)
                reached += 1
            except (DialError, ShardrouteError) as exc:
                log.info("bootstrap peer %s unreachable: %s", addr, exc)
        if not len(self.dht.routing_table):
            return None
        return await self.dht.get_closest_peers(self.peer_id.raw)
