"""An in-memory Kademlia network for lookup tests: every node has its own RoutingTable.

Answers are computed synchronously from the asked node's table; requests in flight complete in
a random order, so the lookup sees the interleavings alpha concurrent requests produce.
"""

from __future__ import annotations

import hashlib
import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass

from shardroute.identity.peer_id import PeerId
from shardroute.kad.keyspace import Key
from shardroute.kad.lookup import Lookup
from shardroute.kad.routing_table import RoutingTable
from tests.support.peers import random_peer_id


def peer_value(peer: PeerId) -> int:
    """The peer's keyspace position, computed here independently of kad.keyspace."""
    return int.from_bytes(hashlib.sha256(peer.raw).digest(), "big")


@dataclass
class LookupStats:
    lookups: int = 0
    exact: int = 0
    requests: int = 0
    rounds: int = 0

    def add(self, lookup: Lookup, exact: bool) -> None:
        self.lookups += 1
        self.exact += exact
        self.requests += lookup.requests_sent
        self.rounds += lookup.rounds

    def __str__(self) -> str:
        n = max(self.lookups, 1)
        return (
            f"{self.exact}/{self.lookups} exact, {self.requests / n:.1f} requests "
            f"and {self.rounds / n:.2f} rounds per lookup"
        )


class SimNetwork:
    """`size` nodes; each table is filled from the global view with the node's `near` XOR-nearest
    peers plus `sample` random others, offered in random order (the table keeps what fits)."""

    def __init__(
        self, size: int, *, seed: int, k: int = 20, near: int = 40, sample: int = 120
    ) -> None:
        self.rng = random.Random(seed)
        self.k = k
        self.peers = [random_peer_id(self.rng) for _ in range(size)]
        self.values = {p: peer_value(p) for p in self.peers}
        by_value = {v: p for p, v in self.values.items()}
        self.down: set[PeerId] = set()
        self.tables: dict[PeerId, RoutingTable] = {}
        for node in self.peers:
            own = self.values[node]
            nearest = heapq.nsmallest(near + 1, by_value, key=own.__xor__)[1:]
            offered = [by_value[v] for v in nearest]
            offered += self.rng.sample(self.peers, min(sample, size))
            self.rng.shuffle(offered)
            table = RoutingTable(node, k=k)
            for t, peer in enumerate(offered):
                table.observe(peer, float(t))
            self.tables[node] = table

    def fail(self, fraction: float, *, forgotten: float = 0.0) -> None:
        """Take a random `fraction` of the nodes down: every request to them fails. Each table
        drops each down peer with probability `forgotten`, as a refresh would have."""
        self.down = set(self.rng.sample(self.peers, int(len(self.peers) * fraction)))
        for table in self.tables.values():
            for peer in table.peers():
                if peer in self.down and self.rng.random() < forgotten:
                    table.remove(peer)

    def true_closest(self, target: Key, *, exclude: PeerId, live: bool = True) -> list[PeerId]:
        """Brute force over the global view: the k nearest peers other than `exclude` (only
        those up, unless `live` is False)."""
        t = int.from_bytes(target.digest, "big")
        peers = [p for p in self.peers if p != exclude and not (live and p in self.down)]
        return sorted(peers, key=lambda p: self.values[p] ^ t)[: self.k]

    def answer(self, asker: PeerId, asked: PeerId, target: Key) -> list[PeerId]:
        # A server answers with its k nearest, never naming the requester.
        return self.tables[asked].nearest(target, self.k, exclude=(asker,))

    def run(
        self,
        origin: PeerId,
        target: Key,
        *,
        alpha: int = 10,
        beta: int = 3,
        flaky: float = 0.0,
        answer: Callable[[PeerId, PeerId, Key], list[PeerId]] | None = None,
    ) -> Lookup:
        """One lookup from `origin`; `flaky` is the chance that any single request fails."""
        reply = answer or self.answer
        lookup = Lookup(
            target,
            self.tables[origin].nearest(target, self.k),
            self_id=origin,
            k=self.k,
            alpha=alpha,
            beta=beta,
        )
        in_flight: list[PeerId] = []
        while not lookup.finished:
            asked = lookup.next_queries()
            assert len(in_flight) + len(asked) <= alpha
            in_flight.extend(asked)
            assert in_flight, "the lookup neither finished nor asked anyone: it stalled"
            peer = in_flight.pop(self.rng.randrange(len(in_flight)))
            if peer in self.down or self.rng.random() < flaky:
                lookup.on_failure(peer)
            else:
                lookup.on_reply(peer, reply(origin, peer, target))
        return lookup
