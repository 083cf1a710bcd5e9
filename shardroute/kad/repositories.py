"""The state the DHT and the publisher keep, as domain values and the protocols of the
repositories that hold them. `shardroute.store` implements them on SQLite and
`kad.memory_repositories` in memory, so the protocol code never knows which one it has. Times
here are wall-clock seconds (they are stored and compared across restarts).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from multiaddr import Multiaddr

from shardroute.identity.peer_id import PeerId


@dataclass(frozen=True, slots=True)
class ProviderRecord:
    key: bytes
    provider: PeerId
    addrs: tuple[Multiaddr, ...]
    received_at: float
    expires_at: float
    addrs_expire_at: float | None = None  # None: as long as the record

    def live_addrs(self, now: float) -> tuple[Multiaddr, ...]:
        if self.addrs_expire_at is not None and now >= self.addrs_expire_at:
            return ()
        return self.addrs


class Refusal(enum.Enum):
    """Why a received provider record was not stored."""

    KEY_FULL = "key_full"  # the key holds its maximum of providers
    PEER_QUOTA = "peer_quota"  # the provider holds its maximum of records
    GROUP_QUOTA = "group_quota"  # the sender's IP group holds its maximum of records
    KEY_GROUP = "key_group"  # the key holds its maximum of providers from that IP group


@dataclass(frozen=True, slots=True, kw_only=True)
class ProviderQuota:
    """What one provider and one source IP group may make a node keep (kad/fairness.py)."""

    per_peer: int
    per_group: int
    per_key_per_group: int


@dataclass(frozen=True, slots=True)
class ReceivedRecord:
    """A provider record a peer gave us, with the IP group its connection came from (None:
    exempt from group limits)."""

    record: ProviderRecord
    source_group: str | None = None


@dataclass(frozen=True, slots=True)
class StoredValue:
    key: bytes
    value: bytes
    received_at: float


@dataclass(frozen=True, slots=True)
class SavedPeer:
    """A routing-table entry as the durable store keeps it."""

    peer: PeerId
    addrs: tuple[Multiaddr, ...]
    last_seen: float
    last_useful: float | None = None


class ProviderStore(Protocol):
    """Provider records keyed by (key, provider). `add_provider` upserts and enforces the
    per-key cap (False: refused); `get_providers` returns unexpired records only, with
    addresses emptied past their own TTL; `expire` deletes at most `batch` expired records."""

    async def add_provider(self, record: ProviderRecord) -> bool: ...

    async def add_providers(
        self, records: Sequence[ProviderRecord], *, durable: bool = True
    ) -> list[bool]:
        """Many upserts as one write, fsync'd unless `durable` is off (records that can be
        written again, such as our own next to the durable announcement); which were stored."""
        ...

    async def accept_providers(
        self, received: Sequence[ReceivedRecord], quota: ProviderQuota
    ) -> list[Refusal | None]:
        """Records peers gave us, under the per-key cap and `quota`, as one group commit
        (others' records, soft state: not fsync'd); per record None (stored) or why not.
        A provider refreshing a record it already has here is never refused."""
        ...

    async def sweep_orphans(self) -> int:
        """Forget providers that no longer have any record; how many."""
        ...

    async def remove_provider(self, key: bytes, provider: PeerId) -> bool: ...

    async def get_providers(self, key: bytes, now: float, limit: int) -> list[ProviderRecord]: ...

    async def expire(self, now: float, batch: int) -> int: ...

    async def count(self, now: float | None = None) -> int: ...


class ValueStore(Protocol):
    """Value records as received (validated before `put`); `expire` deletes at most `batch`
    values received before `older_than`."""

    async def get(self, key: bytes) -> StoredValue | None: ...

    async def put(self, key: bytes, value: bytes, received_at: float) -> None: ...

    async def expire(self, older_than: float, batch: int) -> int: ...


class RoutingTableStore(Protocol):
    """The routing table's durable snapshot: `save` replaces it whole."""

    async def save(self, peers: Sequence[SavedPeer]) -> None: ...

    async def load(self) -> list[SavedPeer]: ...


class AnnouncementStore(Protocol):
    """The shards this node announces, each with when it is next due for (re)publishing.

    `add` records (multihash, codec) pairs as announced and due at `now`, durably before it
    returns; `due` lists keys due by `now`, soonest first; `reschedule` takes (key, next time,
    peers that took the last round) and leaves withdrawn keys withdrawn."""

    async def add(self, entries: Sequence[tuple[bytes, int]], now: float) -> int: ...

    async def remove(self, keys: Sequence[bytes]) -> int: ...

    async def due(self, now: float, limit: int) -> list[bytes]: ...

    async def due_count(self, now: float) -> int: ...

    async def next_due_at(self) -> float | None: ...

    async def reschedule(self, entries: Sequence[tuple[bytes, float, int]]) -> None: ...

    async def contains(self, key: bytes) -> bool: ...

    async def count(self) -> int: ...


class Storage(Protocol):
    """The four repositories of one node (`store.SqliteStore`, `MemoryStorage`)."""

    @property
    def providers(self) -> ProviderStore: ...

    @property
    def values(self) -> ValueStore: ...

    @property
    def routing(self) -> RoutingTableStore: ...

    @property
    def announcements(self) -> AnnouncementStore: ...

    async def close(self) -> None: ...
