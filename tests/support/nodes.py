"""Whole nodes in the test process: `App`s on loopback with in-memory state."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import anyio
from multiaddr import Multiaddr

from shardroute.app import App
from shardroute.clock import Clock
from shardroute.config import Settings
from shardroute.identity.keys import Ed25519PrivateKey
from shardroute.kad.memory_repositories import MemoryStorage
from shardroute.kad.repositories import Storage
from shardroute.obs.metrics import Metrics
from tests.support.settings import LOOPBACK


def loopback_app(
    settings: Settings = LOOPBACK,
    *,
    storage: Storage | None = None,
    clock: Clock | None = None,
    metrics: Metrics | None = None,
    **kwargs: Any,
) -> App:
    """A node on 127.0.0.1 with a fresh key and memory stores (unless given)."""
    return App(
        settings,
        identity=Ed25519PrivateKey.generate(),
        storage=storage or MemoryStorage(max_providers_per_key=settings.max_providers_per_key),
        clock=clock,
        metrics=metrics,
        **kwargs,
    )


def address(app: App) -> Multiaddr:
    """The node's first listen address with its /p2p/ ID."""
    return app.listen_multiaddrs()[0]


async def connect_all(apps: Sequence[App], *, seconds: float = 60) -> None:
    """Dial every pair once (the later node dials the earlier)."""
    with anyio.fail_after(seconds):
        for i, app in enumerate(apps):
            for other in apps[:i]:
                await app.node.connect(address(other))
