"""The composition root: builds the node from its settings, runs it, shuts it down in order."""

from __future__ import annotations

import gc
import logging
import signal
from collections.abc import Callable, Sequence
from pathlib import Path

import anyio
import prometheus_client

from shardroute.addrs import parse_multiaddr, with_p2p
from shardroute.api.server import ApiServer
from shardroute.api.service import ShardRouteService
from shardroute.config import Settings
from shardroute.identity.keys import Ed25519PrivateKey
from shardroute.identity.keystore import load_or_create_identity
from shardroute.node import Node
from shardroute.obs.metrics import Metrics
from shardroute.publisher import Publisher
from shardroute.store.sqlite import SqliteStore

log = logging.getLogger(__name__)


async def run_node(settings: Settings, announce: Callable[[Sequence[str]], None]) -> None:
    """Run until SIGINT or SIGTERM; `announce` receives the full listen multiaddrs once bound."""
    data_dir = Path(settings.data_dir)
    identity = load_or_create_identity(data_dir)
    store = await SqliteStore.open(data_dir, max_providers_per_key=settings.max_providers_per_key)
    try:
        await _serve(settings, identity, store, announce)
    finally:
        with anyio.CancelScope(shield=True):
            await store.close()
    log.info("node stopped")


async def _serve(
    settings: Settings,
    identity: Ed25519PrivateKey,
    store: SqliteStore,
    announce: Callable[[Sequence[str]], None],
) -> None:
    metrics = Metrics(prometheus_client.REGISTRY)
    store_seconds = metrics.store_operation_seconds
    store.observe_with(lambda operation, seconds: store_seconds.labels(operation).observe(seconds))
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        node = Node(
            settings, identity, providers=store.providers, values=store.values, metrics=metrics
        )
        async with node, anyio.create_task_group() as tg:
            host = node.host
            publisher = Publisher(
                node.dht,
                store.announcements,
                node.clock,
                republish_interval=settings.republish_interval,
                metrics=metrics,
            )
            service = ShardRouteService(
                node, store, publisher, metrics, batch_limit=settings.announce_batch_limit
            )
            api = ApiServer(service, settings.grpc)
            # What start-up built (modules, migrations, the schema) lives as long as the process;
            # frozen, it is left out of every later full collection, which otherwise walks it
            # all and stalls the API for tens of milliseconds (seen with py-spy and a GC callback).
            gc.collect()
            gc.freeze()
            await api.start()
            metrics_host, _, metrics_port = settings.metrics.rpartition(":")
            http, _ = prometheus_client.start_http_server(
                int(metrics_port), metrics_host, registry=metrics.registry
            )
            announce([str(with_p2p(addr, host.peer_id)) for addr in host.listen_addrs])
            log.info(
                "node %s running in %s mode under %s; gRPC on port %d, metrics on port %d",
                host.peer_id,
                node.mode,
                node.protocol,
                api.port,
                http.server_port,
            )
            saved = await store.routing.load()
            bootstrap = [parse_multiaddr(a) for a in settings.bootstrap]
            tg.start_soon(node.maintain, bootstrap, saved)
            tg.start_soon(_keep_state, node, store)
            tg.start_soon(publisher.run)
            async for signum in signals:
                log.info("received %s, shutting down", signal.Signals(signum).name)
                break
            with anyio.CancelScope(shield=True):
                await api.stop(grace=5.0)
                http.shutdown()
                await store.routing.save(node.routing_snapshot())
            tg.cancel_scope.cancel()


# Routing-table changes are saved after this quiet period, so a burst of admissions costs one
# write and a SIGKILL loses at most this much of the table.
SAVE_DEBOUNCE = 1.0


async def _keep_state(node: Node, store: SqliteStore) -> None:
    async with anyio.create_task_group() as tg:
        tg.start_soon(_save_routing_table, node, store)
        tg.start_soon(_record_counts, node, store)


async def _save_routing_table(node: Node, store: SqliteStore) -> None:
    while True:
        await node.dht.table_changed.wait()
        await anyio.sleep(SAVE_DEBOUNCE)
        await store.routing.save(node.routing_snapshot())


# Record counts are COUNT(*) queries: refreshed on this period, not on every scrape.
COUNTS_INTERVAL = 15.0


async def _record_counts(node: Node, store: SqliteStore) -> None:
    metrics = node.metrics
    while True:
        metrics.provider_records_stored.set(await store.providers.count(node.clock.wall()))
        metrics.provider_records_announced.set(await store.announcements.count())
        metrics.republish_backlog.set(await store.announcements.due_count(node.clock.wall()))
        await anyio.sleep(COUNTS_INTERVAL)
