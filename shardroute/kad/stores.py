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
# nodes hold; 100 leaves ample room for replicas and caches while one spammed key stays
# around 100 rows. Stores refuse newcomers past the cap rather than evict, so re-announcing
# holders keep their place. Answers carry at most limits.KAD_PROVIDERS_PER_REPLY of them.
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
    """Provider records keyed by (key, provider). `add_provider` upserts and enforces the
    per-key cap (False: refused); `get_providers` returns unexpired records only, with
    addresses emptied past their own TTL; `expire` deletes at most `batch` expired records."""

    async def add_provider(self, record: ProviderRecord) -> bool: ...

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
    async def save(self, peers: Sequence[SavedPeer]) -> None: ...

    async def load(self) -> list[SavedPeer]: ...


class MemoryProviderStore:
    """The in-memory twin of the SQLite provider store (tests, the simulator, no data dir)."""

    def __init__(
        self, *, max_per_key: int = DEFAULT_MAX_PROVIDERS_PER_KEY, rng: random.Random | None = None
    ) -> None:
        if max_per_key < 1:
            raise ValueError("max_per_key must be at least 1")
        self.max_per_key = max_per_key
        self._rng = rng or random.Random()
        # Per key, least recently announced first.
        self._records: dict[bytes, OrderedDict[PeerId, ProviderRecord]] = {}

    async def add_provider(self, record: ProviderRecord) -> bool:
        """Upsert (key, provider). A provider already listed is always refreshed; a new one
        for a key that holds `max_per_key` unexpired providers is refused (returns False), so
        a flood of new peer IDs cannot push out the providers that keep re-announcing."""
        providers = self._records.setdefault(record.key, OrderedDict())
        if record.provider not in providers and len(providers) >= self.max_per_key:
            for provider, held in list(providers.items()):
                if held.expires_at <= record.received_at:
                    del providers[provider]
            if len(providers) >= self.max_per_key:
                return False
        providers.pop(record.provider, None)
        providers[record.provider] = record
        return True

    async def get_providers(self, key: bytes, now: float, limit: int) -> list[ProviderRecord]:
        """Up to `limit` unexpired providers in random order (go answers in random order too),
        their addresses emptied once past `addrs_expire_at`."""
        providers = self._records.get(key)
        if not providers or limit <= 0:
            return []
        live = [
            replace(r, addrs=r.live_addrs(now)) for r in providers.values() if r.expires_at > now
        ]
        self._rng.shuffle(live)
        return live[:limit]

    async def expire(self, now: float, batch: int) -> int:
        """Delete up to `batch` records with `expires_at <= now`; returns how many went."""
        removed = 0
        for key in list(self._records):
            if removed >= batch:
                break
            providers = self._records[key]
            for provider, record in list(providers.items()):
                if removed >= batch:
                    break
                if record.expires_at <= now:
                    del providers[provider]
                    removed += 1
            if not providers:
                del self._records[key]
        return removed

    async def count(self, now: float | None = None) -> int:
        """Records held; with `now`, only those not yet expired."""
        if now is None:
            return sum(len(p) for p in self._records.values())
        return sum(r.expires_at > now for p in self._records.values() for r in p.values())


class MemoryValueStore:
    """The in-memory twin of the SQLite value store."""

    def __init__(self) -> None:
        self._values: dict[bytes, StoredValue] = {}

    async def get(self, key: bytes) -> StoredValue | None:
        return self._values.get(key)

    async def put(self, key: bytes, value: bytes, received_at: float) -> None:
        self._values[key] = StoredValue(key, value, received_at)

    async def expire(self, older_than: float, batch: int) -> int:
        """Delete up to `batch` values received before `older_than`."""
        stale = [k for k, v in self._values.items() if v.received_at < older_than][: max(batch, 0)]
        for key in stale:
            del self._values[key]
        return len(stale)


class MemoryRoutingTableStore:
    """The in-memory twin of the routing-table snapshot: `save` replaces the whole snapshot."""

    def __init__(self) -> None:
        self._peers: list[SavedPeer] = []

    async def save(self, peers: Sequence[SavedPeer]) -> None:
        self._peers = list(peers)

    async def load(self) -> list[SavedPeer]:
        return list(self._peers)
