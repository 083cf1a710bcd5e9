"""In-memory DHT clusters: `Dht`s on a `MemoryNetwork`, wired as `node.Node` wires them on a
host (identify feeds the table, the mode installs the handler). Thousands fit in one process."""

from __future__ import annotations

import random
from collections.abc import Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, replace
from types import TracebackType

from multiaddr import Multiaddr

from shardroute.clock import FakeClock
from shardroute.identity.peer_id import PeerId
from shardroute.kad.dht import Dht, DhtConfig, DhtMetrics, Mode
from shardroute.kad.keyspace import Key, closest
from shardroute.kad.memory_repositories import MemoryProviderStore, MemoryValueStore
from shardroute.kad.memory_transport import MemoryEndpoint, MemoryNetwork
from shardroute.kad.records import make_default_validator
from tests.support.peers import random_peer_id
from tests.support.records import ipns_record, pk_record

__all__ = ["Cluster", "Member", "ipns_record", "pk_record", "random_peer_id"]


@dataclass
class Member:
    dht: Dht
    endpoint: MemoryEndpoint
    providers: MemoryProviderStore
    values: MemoryValueStore

    @property
    def peer_id(self) -> PeerId:
        return self.dht.self_id

    def set_mode(self, mode: Mode) -> None:
        """What the host wiring does: record the mode, install or remove the handler."""
        self.dht.set_mode(mode)
        if mode == "server":
            self.endpoint.serve(self.dht.handler)
        else:
            self.endpoint.stop_serving()


class Cluster:
    """A MemoryNetwork plus Dht nodes; `async with` owns the network and every Dht."""

    def __init__(
        self,
        *,
        seed: int = 1,
        config: DhtConfig | None = None,
        codec: bool = False,
        checkpoints: int = 0,
    ) -> None:
        self.rng = random.Random(seed)
        self.config = config or DhtConfig(diversity=False)
        self.clock = FakeClock()
        self.network = MemoryNetwork(codec=codec, checkpoints=checkpoints)
        self.nodes: list[Member] = []
        self._stack = AsyncExitStack()

    async def __aenter__(self) -> Cluster:
        await self._stack.__aenter__()
        await self._stack.enter_async_context(self.network)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        return await self._stack.__aexit__(exc_type, exc, tb)

    async def add_node(
        self,
        *,
        mode: Mode = "server",
        config: DhtConfig | None = None,
        peer_id: PeerId | None = None,
        metrics: DhtMetrics | None = None,
    ) -> Member:
        peer_id = peer_id or random_peer_id(self.rng)
        endpoint = self.network.add_node(peer_id)
        cfg = replace(config or self.config, mode=mode)
        providers = MemoryProviderStore(max_per_key=cfg.max_providers_per_key)
        values = MemoryValueStore()
        dht = Dht(
            transport=endpoint,
            config=cfg,
            providers=providers,
            values=values,
            validator=make_default_validator(),
            clock=self.clock,
            metrics=metrics,
        )
        await self._stack.enter_async_context(dht)

        async def identified(peer: PeerId, addrs: list[Multiaddr], serving: bool) -> None:
            await dht.peer_seen(peer, addrs, is_server=serving)

        endpoint.on_connected = identified
        node = Member(dht=dht, endpoint=endpoint, providers=providers, values=values)
        node.set_mode(mode)
        self.nodes.append(node)
        return node

    async def bootstrap(self, node: Member, seeds: Sequence[Member]) -> None:
        """Configured bootstrap peers, then a self lookup (kad-dht.md §9)."""
        for seed in seeds:
            if seed is not node:
                await node.dht.peer_seen(seed.peer_id, seed.endpoint.self_addrs(), is_server=True)
        await node.dht.get_closest_peers(node.peer_id.raw)
        await self.network.settle()

    async def build(self, size: int, *, seeds: int = 3) -> list[Member]:
        """`size` server nodes: the first `seeds` know each other, the rest join through them."""
        for _ in range(size):
            await self.add_node()
        first = self.nodes[:seeds]
        for node in self.nodes:
            await self.bootstrap(node, first)
        # A second self lookup each, as the periodic refresh would do.
        for node in self.nodes:
            await node.dht.get_closest_peers(node.peer_id.raw)
        await self.network.settle()
        return list(self.nodes)

    def servers(self) -> list[Member]:
        return [n for n in self.nodes if n.endpoint.serving]

    def true_closest(
        self, key: bytes, *, exclude: PeerId | None = None, k: int | None = None
    ) -> list[PeerId]:
        """The k closest server peers to `key` in the global view."""
        candidates = [n.peer_id for n in self.servers() if n.peer_id != exclude]
        return closest(Key.for_bytes(key), candidates, k or self.config.k)

    def node(self, peer: PeerId) -> Member:
        return next(n for n in self.nodes if n.peer_id == peer)
