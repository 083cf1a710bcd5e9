"""In-memory DHT clusters for the Dht tests: nodes on a MemoryNetwork, wired like the host would."""

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
from shardroute.kad.memory_network import MemoryEndpoint, MemoryNetwork
from shardroute.kad.records import make_default_validator
from shardroute.kad.stores import MemoryProviderStore, MemoryValueStore
from tests.kad._dht_records import ipns_record, pk_record

__all__ = ["Cluster", "Node", "ipns_record", "pk_record", "random_peer_id"]

# Fast identities for big simulations: an identity-multihash peer ID of 32 random key bytes.
_ED25519_ID_PREFIX = b"\x00\x24\x08\x01\x12\x20"


def random_peer_id(rng: random.Random) -> PeerId:
    return PeerId(raw=_ED25519_ID_PREFIX + rng.randbytes(32))


@dataclass
class Node:
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
        self.nodes: list[Node] = []
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
    ) -> Node:
        peer_id = peer_id or random_peer_id(self.rng)
        endpoint = self.network.add_node(peer_id)
        cfg = replace(config or self.config, mode=mode)
        providers = MemoryProviderStore()
        values = MemoryValueStore()
        dht = Dht(
            network=endpoint,
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
        node = Node(dht=dht, endpoint=endpoint, providers=providers, values=values)
        node.set_mode(mode)
        self.nodes.append(node)
        return node

    async def bootstrap(self, node: Node, seeds: Sequence[Node]) -> None:
        """Configured bootstrap peers, then a self lookup (kad-dht.md §9)."""
        for seed in seeds:
            if seed is not node:
                await node.dht.peer_seen(seed.peer_id, seed.endpoint.self_addrs(), is_server=True)
        await node.dht.get_closest_peers(node.peer_id.raw)
        await self.network.settle()

    async def build(self, size: int, *, seeds: int = 3) -> list[Node]:
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

    def servers(self) -> list[Node]:
        return [n for n in self.nodes if n.endpoint.serving]

    def true_closest(
        self, key: bytes, *, exclude: PeerId | None = None, k: int | None = None
    ) -> list[PeerId]:
        """The k closest server peers to `key` in the global view."""
        candidates = [n.peer_id for n in self.servers() if n.peer_id != exclude]
        return closest(Key.for_bytes(key), candidates, k or self.config.k)

    def node(self, peer: PeerId) -> Node:
        return next(n for n in self.nodes if n.peer_id == peer)
