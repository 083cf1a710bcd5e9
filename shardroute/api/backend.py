"""What the API needs of a running node: the operations a storage node asks for, and what the
node reports about itself. `app.App` implements it; the servicer knows nothing else."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from multiaddr import Multiaddr

from shardroute.content import ContentId
from shardroute.identity.peer_id import PeerId
from shardroute.kad.config import Mode
from shardroute.kad.messages import PeerInfo
from shardroute.kad.reports import LookupReport, PutReport, ValueReport


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeStatus:
    peer_id: PeerId
    addrs: tuple[Multiaddr, ...]
    mode: Mode
    protocol: str
    agent_version: str
    routing_table_size: int
    connections: int
    stored_records: int
    announced_records: int
    published_shards: int  # since the node started
    publish_lookups: int
    republish_backlog: int


@dataclass(frozen=True, slots=True, kw_only=True)
class RoutingEntry:
    peer: PeerId
    addrs: tuple[Multiaddr, ...]
    bucket: int
    last_seen_seconds_ago: float


class NodeBackend(Protocol):
    def peer_count(self) -> int:
        """Peers in the routing table."""
        ...

    async def announce(self, cids: Sequence[ContentId]) -> int:
        """Record the shards durably (each once); they are published in the background."""
        ...

    async def announce_and_wait(self, cids: Sequence[ContentId]) -> tuple[int, int]:
        """`announce`, then wait for that publication: (shards, fewest peers that took one)."""
        ...

    async def withdraw(self, cids: Sequence[ContentId]) -> int: ...

    def find_providers(
        self, key: bytes, count: int, *, on_report: Callable[[LookupReport], None] | None = None
    ) -> AsyncGenerator[PeerInfo, None]:
        """Providers as they arrive; `on_report` gets the lookup's report, if one ran."""
        ...

    async def closest_peers(self, key: bytes) -> LookupReport: ...

    async def find_peer(self, peer: PeerId) -> PeerInfo | None:
        """`peer` with the addresses we know for it, else from a DHT lookup; None if unfound."""
        ...

    def protocols_of(self, peer: PeerId) -> tuple[str, ...]:
        """The protocols `peer` told us by identify (ours for us); empty when unknown."""
        ...

    async def put_value(self, key: bytes, value: bytes) -> PutReport: ...

    async def search_value(self, key: bytes, *, quorum: int | None = None) -> ValueReport: ...

    async def status(self) -> NodeStatus: ...

    def routing_entries(self) -> list[RoutingEntry]: ...

    @property
    def mode(self) -> Mode: ...

    def set_mode(self, mode: Mode) -> None: ...

    async def connect(self, addr: Multiaddr) -> tuple[PeerId, bool]:
        """Dial a peer; returns its ID and whether it entered the routing table."""
        ...
