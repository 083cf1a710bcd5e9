"""The composition root: `App` builds a whole node from its settings, runs it, shuts it down
in order. `serve` runs one; tests and benchmarks start theirs in process the same way.

    async with App(settings) as app:
        ...  # app.dht, app.host, app.publisher; the gRPC API and metrics are up

Built here and nowhere else: the store, the host (TCP, Noise, Yamux), the kad transport and the
DHT on it, the node wiring between them, the publisher, bootstrap, refresh and expiry, the gRPC
API and the metrics endpoint. Shutdown runs backwards: the API drains, the routing table is
saved, the background tasks stop, then the DHT, the host and the store close.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, aclosing
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import anyio.abc
import prometheus_client
from multiaddr import Multiaddr

from shardroute import __version__, limits
from shardroute.addrs import parse_multiaddr, with_p2p
from shardroute.api.access import ApiAccess
from shardroute.api.backend import NodeStatus, RoutingEntry
from shardroute.api.routing_http import RoutingHttpServer
from shardroute.api.server import ApiServer
from shardroute.api.service import ShardRouteService
from shardroute.clock import Clock, SystemClock
from shardroute.config import Settings
from shardroute.content import ContentId
from shardroute.datadir import DataDirLock
from shardroute.errors import StartupError, StoreError
from shardroute.identity.keys import Ed25519PrivateKey
from shardroute.identity.keystore import load_or_create_identity
from shardroute.identity.peer_id import PeerId
from shardroute.kad.config import DhtConfig, Mode
from shardroute.kad.dht import Dht
from shardroute.kad.keyspace import Key
from shardroute.kad.messages import PeerInfo
from shardroute.kad.records import make_default_validator
from shardroute.kad.reports import LookupReport, PutReport, ValueReport
from shardroute.kad.repositories import SavedPeer, Storage
from shardroute.kad.streams import StreamTransport
from shardroute.maintenance.bootstrap import Bootstrapper
from shardroute.maintenance.expiry import ExpirySweep
from shardroute.maintenance.refresh import Refresher
from shardroute.maintenance.republish import Publisher
from shardroute.maintenance.state import count_records, save_routing_table
from shardroute.net.addresses import AnnouncePolicy, LocalAddresses, parse_cidr
from shardroute.net.host import Host, HostLimits
from shardroute.net.muxer import Direction
from shardroute.net.resources import ResourceLimits
from shardroute.net.transport import bind_failure
from shardroute.node import Node
from shardroute.obs.metrics import Metrics, MetricsAdapter
from shardroute.store.database import SqliteStore
from shardroute.tasks import Service, enter_task_group

if TYPE_CHECKING:
    import dns.asyncresolver

log = logging.getLogger(__name__)

AGENT_VERSION = f"shardroute/{__version__}"


class App(Service):
    def __init__(
        self,
        settings: Settings,
        *,
        identity: Ed25519PrivateKey | None = None,
        storage: Storage | None = None,
        clock: Clock | None = None,
        metrics: Metrics | None = None,
        dns_resolver: dns.asyncresolver.Resolver | None = None,
        migrate_in_child: bool = False,
    ) -> None:
        """Without `identity` the node's key is the one in the data folder (made on first
        start); without `storage` its state is the SQLite file there, its schema brought up
        to date in a child process with `migrate_in_child` (what `serve` does: the migration
        tools' memory never stays with the node)."""
        self.settings = settings
        self.clock = clock or SystemClock()
        self.metrics = metrics or Metrics()
        self._identity = identity
        self._storage = storage
        self._dns_resolver = dns_resolver
        self._migrate_in_child = migrate_in_child
        self.joined = anyio.Event()  # set once the first join finished
        self.api: ApiServer | None = None
        self.metrics_port: int | None = None
        self.routing_http: RoutingHttpServer | None = None

    # -- building ------------------------------------------------------------------------------

    def _build(self, identity: Ed25519PrivateKey, storage: Storage) -> None:
        settings, clock, reports = self.settings, self.clock, MetricsAdapter(self.metrics)
        self.storage = storage
        policy = AnnouncePolicy(
            announce=tuple(parse_multiaddr(a) for a in settings.announce),
            append_announce=tuple(parse_multiaddr(a) for a in settings.append_announce),
            no_announce=tuple(parse_cidr(c) for c in settings.no_announce),
        )
        self.host = Host(
            identity,
            listen_addrs=[parse_multiaddr(a) for a in settings.listen],
            clock=clock,
            host_limits=HostLimits(
                resources=resource_limits(settings),
                max_streams_per_connection=settings.max_streams_per_connection,
            ),
            agent_version=AGENT_VERSION,
            addresses=LocalAddresses(policy, share_private=settings.share_private_addrs),
            metrics=reports,
        )
        config = DhtConfig.from_settings(settings)
        self.kad_transport = StreamTransport(self.host, config.protocol_id, reports=reports)
        self.dht = Dht(
            transport=self.kad_transport,
            config=config,
            providers=storage.providers,
            values=storage.values,
            validator=make_default_validator(),
            clock=clock,
            metrics=reports,
        )
        self.node = Node(self.host, self.dht, metrics=reports)
        self.publisher = Publisher(
            self.dht,
            storage.announcements,
            clock,
            republish_interval=settings.republish_interval,
            metrics=self.metrics,
        )
        self.bootstrapper = Bootstrapper(
            dht=self.dht,
            connector=self.node,
            clock=clock,
            addrs=[parse_multiaddr(a) for a in settings.bootstrap],
            dns_resolver=self._dns_resolver,
            metrics=reports,
        )
        self.refresher = Refresher(
            self.dht,
            clock,
            interval=settings.refresh_interval,
            bootstrapper=self.bootstrapper,
            metrics=reports,
        )
        self.expiry = ExpirySweep(
            providers=storage.providers,
            values=storage.values,
            clock=clock,
            interval=settings.expiry_interval,
            max_value_age=config.max_value_age,
            metrics=reports,
        )
        self._export_gauges()

    def _export_gauges(self) -> None:
        """Connection and stream gauges read the host when Prometheus scrapes."""
        host = self.host

        def counter(direction: Direction) -> Callable[[], float]:
            return lambda: float(sum(c.direction is direction for c in host.all_connections()))

        for direction in Direction:
            self.metrics.connections.labels(direction.value).set_function(counter(direction))
        self.metrics.streams.set_function(
            lambda: float(sum(len(c.streams) for c in host.all_connections()))
        )

    # -- running -------------------------------------------------------------------------------

    async def _enter(self, stack: AsyncExitStack) -> None:
        settings = self.settings
        storage = self._storage
        # What can refuse to start (a locked folder, a port in use) goes first: a node that
        # cannot start must not have begun anything.
        if storage is None or self._identity is None:
            stack.enter_context(DataDirLock(Path(settings.data_dir)))
        self.access = ApiAccess.from_files(
            token_file=settings.api_token_file,
            tls_cert=settings.api_tls_cert,
            tls_key=settings.api_tls_key,
            tls_client_ca=settings.api_tls_client_ca,
        )
        for setting in ("grpc_listen", "routing_http"):
            self.access.check_exposure(
                setting, getattr(settings, setting), insecure=settings.insecure_api
            )
        if settings.grpc_listen:
            self.api = ApiServer(
                ShardRouteService(self, self.metrics, batch_limit=settings.announce_batch_limit),
                settings.grpc_listen,
                self.access,
            )
        if settings.metrics:
            self.metrics_port = self._serve_metrics(stack, settings.metrics)
        if settings.routing_http:
            self.routing_http = RoutingHttpServer(
                self,
                settings.routing_http,
                metrics=self.metrics,
                query_timeout=settings.query_timeout,
                share_private=settings.share_private_addrs,
                clock=self.clock,
                bearer_token=self.access.token,
                ssl_context=self.access.ssl_context(),
            )
            await self.routing_http.bind()
            stack.push_async_callback(self.routing_http.release)
        if storage is None:
            store = await SqliteStore.open(
                Path(settings.data_dir),
                max_providers_per_key=settings.max_providers_per_key,
                migrate_in_child=self._migrate_in_child,
            )
            store.observe_with(self._observe_store)
            storage = store
        stack.push_async_callback(_shielded, storage.close)
        identity = self._identity or load_or_create_identity(Path(settings.data_dir))
        self._build(identity, storage)
        await stack.enter_async_context(self.host)
        await stack.enter_async_context(self.dht)
        tg = await enter_task_group(stack)
        stack.push_async_callback(self._save_table)
        await tg.start(self.node.run)
        saved = await storage.routing.load()
        tg.start_soon(self._maintain, saved)
        tg.start_soon(save_routing_table, self.dht, storage.routing)
        tg.start_soon(
            count_records,
            storage.providers,
            storage.announcements,
            self.clock,
            MetricsAdapter(self.metrics),
        )
        tg.start_soon(self.publisher.run)
        tg.start_soon(self.kad_transport.run)
        if self.api is not None:
            await self.api.start(serving=not settings.bootstrap)
            stack.push_async_callback(_shielded, self.api.stop, 5.0)
        if self.routing_http is not None:
            await stack.enter_async_context(self.routing_http)
        log.info(
            "node %s running in %s mode under %s%s%s%s",
            self.peer_id,
            self.dht.mode,
            self.dht.config.protocol_id,
            f"; gRPC on port {self.api.port}" if self.api else "",
            f"; metrics on port {self.metrics_port}" if self.metrics_port is not None else "",
            f"; routing HTTP on port {self.routing_http_port}" if self.routing_http else "",
        )

    @property
    def routing_http_port(self) -> int | None:
        """The Delegated Routing V1 HTTP API's bound port, once started (None when off)."""
        return None if self.routing_http is None else self.routing_http.port

    def _serve_metrics(self, stack: AsyncExitStack, address: str) -> int:
        host, _, port = address.rpartition(":")
        try:
            http, _ = prometheus_client.start_http_server(
                int(port), host, registry=self.metrics.registry
            )
        except OSError as exc:
            raise StartupError(
                f"metrics {address}: cannot listen: {bind_failure(exc, int(port))}"
            ) from None
        stack.callback(http.shutdown)
        return int(http.server_port)

    async def _maintain(self, saved: Sequence[SavedPeer]) -> None:
        """Join, then refresh the table and sweep expired records, until cancelled."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self.expiry.run)
            await self.bootstrapper.join(saved)
            self.joined.set()
            if self.api is not None and len(self.dht.routing_table):
                await self.api.set_serving(True)
            tg.start_soon(self.refresher.run)

    async def _save_table(self) -> None:
        with anyio.CancelScope(shield=True):
            try:
                await self.storage.routing.save(self.dht.keeper.snapshot())
            except StoreError as exc:
                log.warning("routing table not saved at shutdown: %s", exc)

    def _observe_store(self, operation: str, seconds: float) -> None:
        self.metrics.store_operation_seconds.labels(operation).observe(seconds)

    # -- what the node is ------------------------------------------------------------------

    @property
    def peer_id(self) -> PeerId:
        return self.host.peer_id

    def listen_multiaddrs(self) -> list[Multiaddr]:
        """Full `/p2p/` addresses of the listeners, as `serve` prints them."""
        return [with_p2p(addr, self.peer_id) for addr in self.host.interface_listen_addrs()]

    # -- the operations the API offers (api.backend.NodeBackend) -------------------------

    def peer_count(self) -> int:
        return len(self.dht.routing_table)

    async def announce(self, cids: Sequence[ContentId]) -> int:
        count, _ = await self.publisher.announce(cids)
        return count

    async def announce_and_wait(self, cids: Sequence[ContentId]) -> tuple[int, int]:
        count, waiting = await self.publisher.announce(cids, wait=True)
        assert waiting is not None
        try:
            return count, await waiting.stored_on()
        finally:
            self.publisher.forget(waiting)

    async def withdraw(self, cids: Sequence[ContentId]) -> int:
        return await self.publisher.withdraw(cids)

    def find_providers(
        self, key: bytes, count: int, *, on_report: Callable[[LookupReport], None] | None = None
    ) -> AsyncGenerator[PeerInfo, None]:
        return self._find_providers(key, count, on_report)

    async def _find_providers(
        self, key: bytes, count: int, on_report: Callable[[LookupReport], None] | None
    ) -> AsyncGenerator[PeerInfo, None]:
        # Peers keep a withdrawn shard's record of us until its TTL (there is no
        # un-provide message); this node knows better and never names itself for it.
        async with aclosing(self.dht.find_providers(key, count, on_report=on_report)) as found:
            async for info in found:
                if info.peer_id == self.peer_id and not await self.storage.announcements.contains(
                    key
                ):
                    continue
                yield info

    async def closest_peers(self, key: bytes) -> LookupReport:
        return await self.dht.get_closest_peers(key)

    async def find_peer(self, peer: PeerId) -> PeerInfo | None:
        return self.dht.peer_info(peer) or await self.dht.find_peer(peer)

    def protocols_of(self, peer: PeerId) -> tuple[str, ...]:
        if peer == self.peer_id:
            return tuple(self.host.protocols())
        return tuple(sorted(self.host.peerstore.protocols(peer)))

    async def put_value(self, key: bytes, value: bytes) -> PutReport:
        return await self.dht.put_value(key, value)

    async def search_value(self, key: bytes, *, quorum: int | None = None) -> ValueReport:
        return await self.dht.search_value(key, quorum=quorum)

    async def status(self) -> NodeStatus:
        now = self.clock.wall()
        return NodeStatus(
            peer_id=self.peer_id,
            addrs=tuple(self.host.advertised_addrs()),
            mode=self.dht.mode,
            protocol=self.dht.config.protocol_id,
            agent_version=AGENT_VERSION,
            routing_table_size=len(self.dht.routing_table),
            connections=self.host.connection_count,
            stored_records=await self.storage.providers.count(now),
            announced_records=await self.storage.announcements.count(),
            published_shards=self.publisher.stats.shards,
            publish_lookups=self.publisher.stats.lookups,
            republish_backlog=await self.storage.announcements.due_count(now),
        )

    def routing_entries(self) -> list[RoutingEntry]:
        table, now = self.dht.routing_table, self.clock.monotonic()
        return [
            RoutingEntry(
                peer=entry.peer,
                addrs=self.dht.addrs_of(entry.peer),
                bucket=table.bucket_index(entry.peer),
                last_seen_seconds_ago=max(0.0, now - entry.last_seen),
            )
            for entry in sorted(
                table.snapshot(), key=lambda e: (Key.for_peer(e.peer).digest, e.peer.raw)
            )
        ]

    @property
    def mode(self) -> Mode:
        return self.node.mode

    def set_mode(self, mode: Mode) -> None:
        self.node.set_mode(mode)

    async def connect(self, addr: Multiaddr) -> tuple[PeerId, bool]:
        peer = await self.node.connect(addr)
        return peer, peer in self.dht.routing_table


def resource_limits(settings: Settings) -> ResourceLimits:
    """The resource manager's budgets: the defaults of `limits`, scaled to `max_connections`."""
    total = settings.max_connections
    return ResourceLimits(
        connections=total,
        inbound_connections=min(limits.MAX_INBOUND_CONNECTIONS, total),
        outbound_connections=min(limits.MAX_OUTBOUND_CONNECTIONS, total),
        reserved_connections=min(limits.RESERVED_CONNECTIONS, total // 4),
        exempt_loopback=settings.exempt_loopback_limits,
    )


async def _shielded(close: Callable[..., Awaitable[object]], *args: object) -> None:
    with anyio.CancelScope(shield=True):
        await close(*args)
