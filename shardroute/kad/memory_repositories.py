"""In-memory twins of the repositories (tests, the simulator, a node without a data dir)."""

from __future__ import annotations

import random
from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import replace

from shardroute.identity.peer_id import PeerId
from shardroute.kad.config import DhtConfig
from shardroute.kad.repositories import (
    ProviderQuota,
    ProviderRecord,
    ReceivedRecord,
    Refusal,
    SavedPeer,
    StoredValue,
)

_DEFAULT_MAX_PER_KEY = DhtConfig().max_providers_per_key


class MemoryProviderStore:
    """The in-memory twin of the SQLite provider store (tests, the simulator, no data dir)."""

    def __init__(
        self, *, max_per_key: int = _DEFAULT_MAX_PER_KEY, rng: random.Random | None = None
    ) -> None:
        if max_per_key < 1:
            raise ValueError("max_per_key must be at least 1")
        self.max_per_key = max_per_key
        self._rng = rng or random.Random()
        # Per key, least recently announced first.
        self._records: dict[bytes, OrderedDict[PeerId, ProviderRecord]] = {}
        self._groups: dict[tuple[bytes, PeerId], str] = {}  # source group of received records
        self._per_peer: Counter[PeerId] = Counter()
        self._per_group: Counter[str] = Counter()

    async def add_provider(self, record: ProviderRecord) -> bool:
        """Upsert (key, provider). A provider already listed is always refreshed; a new one
        for a key that holds `max_per_key` unexpired providers is refused (returns False), so
        a flood of new peer IDs cannot push out the providers that keep re-announcing."""
        providers = self._records.setdefault(record.key, OrderedDict())
        if record.provider not in providers and len(providers) >= self.max_per_key:
            for provider, held in list(providers.items()):
                if held.expires_at <= record.received_at:
                    del providers[provider]
                    self._dropped(record.key, provider)
            if len(providers) >= self.max_per_key:
                return False
        if providers.pop(record.provider, None) is None:
            self._per_peer[record.provider] += 1
        providers[record.provider] = record
        return True

    def _dropped(self, key: bytes, provider: PeerId) -> None:
        self._per_peer[provider] -= 1
        if self._per_peer[provider] <= 0:
            del self._per_peer[provider]
        group = self._groups.pop((key, provider), None)
        if group is not None:
            self._per_group[group] -= 1
            if self._per_group[group] <= 0:
                del self._per_group[group]

    async def add_providers(
        self, records: Sequence[ProviderRecord], *, durable: bool = True
    ) -> list[bool]:
        return [await self.add_provider(r) for r in records]

    async def accept_providers(
        self, received: Sequence[ReceivedRecord], quota: ProviderQuota
    ) -> list[Refusal | None]:
        outcome: list[Refusal | None] = []
        for item in received:
            record, group = item.record, item.source_group
            providers = self._records.get(record.key, OrderedDict())
            if record.provider not in providers:
                refusal = self._refusal(record, group, quota)
                if refusal is not None:
                    outcome.append(refusal)
                    continue
            stored = await self.add_provider(record)
            if stored and group is not None and (record.key, record.provider) not in self._groups:
                self._groups[(record.key, record.provider)] = group
                self._per_group[group] += 1
            outcome.append(None if stored else Refusal.KEY_FULL)
        return outcome

    def _refusal(
        self, record: ProviderRecord, group: str | None, quota: ProviderQuota
    ) -> Refusal | None:
        live = [
            r
            for r in self._records.get(record.key, {}).values()
            if r.expires_at > record.received_at
        ]
        if len(live) >= self.max_per_key:
            return Refusal.KEY_FULL
        if self._per_peer[record.provider] >= quota.per_peer:
            return Refusal.PEER_QUOTA
        if group is None:
            return None
        if self._per_group[group] >= quota.per_group:
            return Refusal.GROUP_QUOTA
        same = sum(self._groups.get((record.key, r.provider)) == group for r in live)
        if same >= quota.per_key_per_group:
            return Refusal.KEY_GROUP
        return None

    async def sweep_orphans(self) -> int:
        return 0  # counts go with their records here; nothing is left behind

    async def remove_provider(self, key: bytes, provider: PeerId) -> bool:
        providers = self._records.get(key)
        if providers is None or providers.pop(provider, None) is None:
            return False
        self._dropped(key, provider)
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
                    self._dropped(key, provider)
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


class MemoryAnnouncementStore:
    """The in-memory twin of the announcement store."""

    def __init__(self) -> None:
        # key -> (codec, next publish time, peers that took the last round)
        self._rows: dict[bytes, tuple[int, float, int]] = {}

    async def add(self, entries: Sequence[tuple[bytes, int]], now: float) -> int:
        for key, codec in entries:
            old = self._rows.get(key)
            self._rows[key] = (old[0] if old else codec, now, old[2] if old else 0)
        return len(entries)

    async def remove(self, keys: Sequence[bytes]) -> int:
        return sum(self._rows.pop(key, None) is not None for key in set(keys))

    async def due(self, now: float, limit: int) -> list[bytes]:
        due = sorted((row[1], key) for key, row in self._rows.items() if row[1] <= now)
        return [key for _, key in due[: max(limit, 0)]]

    async def due_count(self, now: float) -> int:
        return sum(row[1] <= now for row in self._rows.values())

    async def next_due_at(self) -> float | None:
        return min((row[1] for row in self._rows.values()), default=None)

    async def reschedule(self, entries: Sequence[tuple[bytes, float, int]]) -> None:
        for key, next_at, stored_on in entries:
            row = self._rows.get(key)
            if row is not None:
                self._rows[key] = (row[0], next_at, stored_on)

    async def contains(self, key: bytes) -> bool:
        return key in self._rows

    async def count(self) -> int:
        return len(self._rows)


class MemoryStorage:
    """All four repositories in memory: a node that forgets everything when it stops."""

    def __init__(self, *, max_providers_per_key: int = _DEFAULT_MAX_PER_KEY) -> None:
        self.providers = MemoryProviderStore(max_per_key=max_providers_per_key)
        self.values = MemoryValueStore()
        self.routing = MemoryRoutingTableStore()
        self.announcements = MemoryAnnouncementStore()

    async def close(self) -> None:
        pass
