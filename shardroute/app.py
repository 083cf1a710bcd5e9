"""The composition root: builds the node from its settings, runs it, shuts it down in order."""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable, Sequence
from pathlib import Path

import anyio

from shardroute.addrs import parse_multiaddr, with_p2p
from shardroute.config import Settings
from shardroute.identity.keystore import load_or_create_identity
from shardroute.node import Node

log = logging.getLogger(__name__)


async def run_node(settings: Settings, announce: Callable[[Sequence[str]], None]) -> None:
    """Run until SIGINT or SIGTERM; `announce` receives the full listen multiaddrs once bound."""
    identity = load_or_create_identity(Path(settings.data_dir))
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with Node(settings, identity) as node:
            host = node.host
            announce([str(with_p2p(addr, host.peer_id)) for addr in host.listen_addrs])
            log.info("node %s running in %s mode under %s", host.peer_id, node.mode, node.protocol)
            if settings.bootstrap:
                report = await node.bootstrap([parse_multiaddr(a) for a in settings.bootstrap])
                log.info(
                    "bootstrap done: %d peers in the routing table%s",
                    len(node.dht.routing_table),
                    "" if report is None else f" after {report.requests} requests",
                )
            async for signum in signals:
                log.info("received %s, shutting down", signal.Signals(signum).name)
                break
    log.info("node stopped")
