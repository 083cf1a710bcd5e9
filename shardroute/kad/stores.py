"""The DHT's state behind interfaces, with in-memory twins.

The SQLite store implements the same protocols, so the protocol code never knows which one it
has. Times here are wall-clock seconds (they are stored and compared across restarts).
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from multiaddr import Multiaddr

from shardroute.identity.peer_id import PeerId

# Providers kept per key unless configured: a key is one shard, which a handful of storage
# nodes hold; 100 leaves room for replication while one spammed key stays small.
DEFAULT_MAX_PROVIDERS_PER_KEY = 100


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
    async def add_provider(self, record: ProviderRecord) -> bool: ...

    async def get_providers(self, key: bytes, now: float, limit: int) -> list[ProviderRecord]: ...

    async def expire(self, now: float, batch: int) -> int: ...

    async def count(self) -> int: ...


class ValueStore(Protocol):
    async def get(self, key: bytes) -> StoredValue | None: ...

    async def put(self, key: bytes, value: bytes, received_at: float) -> None: ...

    async def expire(self, older_than: float, batch: int) -> int: ...


class RoutingTableStore(Protocol):
    async def save(self, peers: Sequence[SavedPeer]) -> None: ...

    async def load(self) -> list[SavedPeer]: ...


class MemoryProviderStore:
    def __init__(self, *, max_per_key: int = DEFAULT_MAX_PROVIDERS_PER_KEY) -> None:
        self.max_per_key = max_per_key
        self._records: dict[bytes, OrderedDict[PeerId, ProviderRecord]] = {}

    async def add_provider(self, record: ProviderRecord) -> bool:
        """Upsert (key, provider). A new provider for a full key is refused (returns False)."""
        providers = self._records.setdefault(record.key, OrderedDict())
        if record.provider not in providers and len(providers) >= self.max_per_key:
            oldest = next(iter(providers.values()))
            if oldest.expires_at > record.received_at:
                return False
            del providers[oldest.provider]
        providers.pop(record.provider, None)
        providers[record.provider] = record
        return True

    async def get_providers(self, key: bytes, now: float, limit: int) -> list[ProviderRecord]:
        providers = self._records.get(key)
        if not providers:
            return []
        live = [
            replace(r, addrs=r.live_addrs(now)) for r in providers.values() if r.expires_at > now
        ]
        random.shuffle(live)
        return live[:limit]

    async def expire(self, now: float, batch: int) -> int:
        removed = 0
        for key in list(self._records):
            providers = self._records[key]
            for provider, record in list(providers.items()):
                if removed >= batch:
                    return removed
                if record.expires_at <= now:
                    del providers[provider]
                    removed += 1
            if not providers:
                del self._records[key]
        return removed

    async def count(self) -> int:
        return sum(len(p) for p in self._records.values())


class MemoryValueStore:
    def __init__(self) -> None:
        self._values: dict[bytes, StoredValue] = {}

    async def get(self, key: bytes) -> StoredValue | None:
        return self._values.get(key)

    async def put(self, key: bytes, value: bytes, received_at: float) -> None:
        self._values[key] = StoredValue(key, value, received_at)

    async def expire(self, older_than: float, batch: int) -> int:
        stale = [k for k, v in self._values.items() if v.received_at < older_than][:batch]
        for key in stale:
            del self._values[key]
        return len(stale)


class MemoryRoutingTableStore:
    def __init__(self) -> None:
        self._peers: list[SavedPeer] = []

    async def save(self, peers: Sequence[SavedPeer]) -> None:
        self._peers = list(peers)

    async def load(self) -> list[SavedPeer]:
        return list(self._peers)
