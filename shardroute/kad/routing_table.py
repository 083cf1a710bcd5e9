"""The k-bucket routing table (kad-dht.md §9) as plain data: it never pings anyone.

`observe` returns a decision; when a bucket is full it names the least-recently-seen peer, the
newcomer waits in that bucket's replacement cache, and the service pings the old peer and then
calls `confirm_alive` or `evict`. Buckets follow go-libp2p-kbucket: a list whose last bucket holds
every peer with cpl ≥ its index and splits when it overflows, up to 256 buckets.
"""

from __future__ import annotations

import dataclasses
import enum
import heapq
from collections import Counter, OrderedDict
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field

from shardroute import limits
from shardroute.identity.peer_id import PeerId
from shardroute.kad.diversity import DiversityFilter
from shardroute.kad.keyspace import KEY_BITS, Key


class Admission(enum.Enum):
    ADDED = "added"
    UPDATED = "updated"
    FULL = "full"
    REJECTED_DIVERSITY = "rejected_diversity"
    REJECTED_SELF = "rejected_self"


@dataclass(frozen=True, slots=True)
class AdmissionResult:
    admission: Admission
    # With FULL: the bucket's least-recently-seen peer, for the service to ping.
    oldest: PeerId | None = None


@dataclass(slots=True)
class TableEntry:
    peer: PeerId
    key: Key
    added_at: float
    last_seen: float
    last_useful: float | None = None
    failures: int = 0
    # Diversity groups the peer was admitted under (kept so `restore` can count it again).
    ip_groups: tuple[str, ...] = ()


@dataclass(slots=True)
class _Bucket:
    # Least recently seen first.
    entries: OrderedDict[PeerId, TableEntry] = field(default_factory=OrderedDict)
    # Newcomers that found the bucket full; most recently seen last.
    replacements: OrderedDict[PeerId, TableEntry] = field(default_factory=OrderedDict)


class RoutingTable:
    def __init__(
        self,
        self_id: PeerId,
        *,
        k: int = limits.KAD_K,
        replacement_cache_size: int = limits.KAD_REPLACEMENT_CACHE,
        diversity: DiversityFilter | None = None,
        max_failures: int = limits.KAD_MAX_FAILURES,
    ) -> None:
        if k < 1 or replacement_cache_size < 0 or max_failures < 1:
            raise ValueError("k and max_failures must be ≥ 1, replacement_cache_size ≥ 0")
        self.self_id = self_id
        self.self_key = Key.for_peer(self_id)
        self.k = k
        self.replacement_cache_size = replacement_cache_size
        self.max_failures = max_failures
        self.diversity = diversity
        self._buckets: list[_Bucket] = [_Bucket()]

    # -- where things go -------------------------------------------------------------------

    def _cpl(self, key: Key) -> int:
        return KEY_BITS - (self.self_key.value ^ key.value).bit_length()

    def bucket_index(self, peer_or_key: PeerId | Key) -> int:
        """The bucket a peer or key falls in now (its cpl, or the last bucket's index)."""
        key = peer_or_key if isinstance(peer_or_key, Key) else Key.for_peer(peer_or_key)
        return min(self._cpl(key), len(self._buckets) - 1)

    def _bucket_of(self, peer: PeerId) -> _Bucket:
        return self._buckets[self.bucket_index(peer)]

    # -- admission ---------------------------------------------------------------------------

    def observe(
        self,
        peer: PeerId,
        now: float,
        *,
        ip_groups: Sequence[str] = (),
        useful: bool = False,
    ) -> AdmissionResult:
        """We heard from a DHT server `peer` (identify, an answer, a request).

        A known peer moves to most-recently-seen and its failures reset (UPDATED). A new one is
        ADDED if its bucket has room (splitting the last bucket if that makes room), else it
        waits in the replacement cache and the result is FULL with the peer to ping. The diversity
        filter (if any) is checked first with `ip_groups`; a known peer keeps its old groups.
        """
        if peer == self.self_id:
            return AdmissionResult(Admission.REJECTED_SELF)
        key = Key.for_peer(peer)
        cpl = self._cpl(key)
        bucket = self._buckets[min(cpl, len(self._buckets) - 1)]
        known = bucket.entries.get(peer)
        if known is not None:
            known.last_seen = now
            known.failures = 0
            if useful:
                known.last_useful = now
            bucket.entries.move_to_end(peer)
            return AdmissionResult(Admission.UPDATED)
        entry = TableEntry(
            peer=peer,
            key=key,
            added_at=now,
            last_seen=now,
            last_useful=now if useful else None,
            ip_groups=tuple(ip_groups),
        )
        return self._admit(entry, cpl)

    def _admit(self, entry: TableEntry, cpl: int) -> AdmissionResult:
        if self.diversity is not None and not self.diversity.allows(cpl, entry.ip_groups):
            return AdmissionResult(Admission.REJECTED_DIVERSITY)
        bucket = self._make_room(cpl)
        if len(bucket.entries) < self.k:
            bucket.replacements.pop(entry.peer, None)
            self._insert(bucket, entry, cpl)
            return AdmissionResult(Admission.ADDED)
        if self.replacement_cache_size:
            bucket.replacements.pop(entry.peer, None)
            bucket.replacements[entry.peer] = entry
            while len(bucket.replacements) > self.replacement_cache_size:
                bucket.replacements.popitem(last=False)
        return AdmissionResult(Admission.FULL, oldest=next(iter(bucket.entries)))

    def _make_room(self, cpl: int) -> _Bucket:
        """The bucket for `cpl`, after splitting the last bucket while that frees room in it."""
        while True:
            last = len(self._buckets) - 1
            bucket = self._buckets[min(cpl, last)]
            if len(bucket.entries) < self.k or cpl < last or not self._split_helps(cpl):
                return bucket
            self._split_last()

    def _split_helps(self, cpl: int) -> bool:
        """Whether splitting the (full) last bucket would move the newcomer or anyone out of it."""
        last = len(self._buckets) - 1
        if last == KEY_BITS - 1:
            return False
        entries = self._buckets[last].entries.values()
        return cpl > last or any(self._cpl(e.key) > last for e in entries)

    def _split_last(self) -> None:
        last = len(self._buckets) - 1
        old = self._buckets[last]
        new = _Bucket()
        for peer in [p for p, e in old.entries.items() if self._cpl(e.key) > last]:
            new.entries[peer] = old.entries.pop(peer)  # keeps the recency order
        # No candidate needs to move: one only waits at the last bucket while every entry there
        # has cpl == last (otherwise its arrival would have split the bucket), so it has too.
        self._buckets.append(new)

    def _backfill(self, bucket: _Bucket) -> PeerId | None:
        """Move the most recent acceptable candidate of the replacement cache into the bucket.

        Candidates the diversity filter now refuses are dropped on the way.
        """
        while bucket.replacements and len(bucket.entries) < self.k:
            _, candidate = bucket.replacements.popitem(last=True)
            cpl = self._cpl(candidate.key)
            if self.diversity is None or self.diversity.allows(cpl, candidate.ip_groups):
                self._insert(bucket, candidate, cpl)
                return candidate.peer
        return None

    def _insert(self, bucket: _Bucket, entry: TableEntry, cpl: int) -> None:
        """Put `entry` in least-recently-seen order (usually at the end) and count it."""
        entries = bucket.entries
        newest = entries[next(reversed(entries))] if entries else None
        entries[entry.peer] = entry
        if newest is not None and entry.last_seen < newest.last_seen:
            # A backfilled candidate may be older than the peers already there.
            ordered = sorted(entries.values(), key=lambda e: e.last_seen)
            entries.clear()
            entries.update((e.peer, e) for e in ordered)
        if self.diversity is not None:
            self.diversity.add(entry.peer, cpl, entry.ip_groups)

    def confirm_alive(self, peer: PeerId, now: float) -> None:
        """The pinged least-recently-seen peer answered: it stays; the newcomer keeps waiting."""
        bucket = self._bucket_of(peer)
        entry = bucket.entries.get(peer)
        if entry is not None:
            entry.last_seen = now
            entry.failures = 0
            bucket.entries.move_to_end(peer)

    # -- removal -----------------------------------------------------------------------------

    def evict(self, peer: PeerId) -> PeerId | None:
        """Drop `peer` and backfill its bucket from the replacement cache, most recent first.

        Returns the peer that took the place, if any. Evicting a peer that is not in the table does
        nothing.
        """
        bucket = self._bucket_of(peer)
        if bucket.entries.pop(peer, None) is None:
            return None
        if self.diversity is not None:
            self.diversity.remove(peer)
        return self._backfill(bucket)

    def record_failure(self, peer: PeerId, now: float) -> PeerId | None:
        """A request to `peer` failed; at `max_failures` in a row it is evicted.

        Returns the peer that took its place, if any. Any `observe` of the peer ends the streak;
        `now` is not needed by the count itself.
        """
        entry = self._bucket_of(peer).entries.get(peer)
        if entry is None:
            return None
        entry.failures += 1
        if entry.failures >= self.max_failures:
            return self.evict(peer)
        return None

    def remove(self, peer: PeerId) -> PeerId | None:
        """Forget `peer` everywhere (e.g. it left server mode); returns the backfill, if any."""
        self._bucket_of(peer).replacements.pop(peer, None)
        return self.evict(peer)

    # -- queries -----------------------------------------------------------------------------

    def nearest(self, target: Key, count: int, *, exclude: Collection[PeerId] = ()) -> list[PeerId]:
        """The `count` table peers nearest to `target`, nearest first.

        Buckets are visited in an order where every peer of an earlier group is nearer to the
        target than any peer of a later one (with c = cpl(self, target): bucket c, then all
        buckets above c, then c-1, c-2, …), so only the groups needed to reach `count` are sorted.
        """
        if count <= 0:
            return []
        last = len(self._buckets) - 1
        c = min(self._cpl(target), last)
        groups = [[c], range(c + 1, last + 1), *([i] for i in range(c - 1, -1, -1))]
        found: list[TableEntry] = []
        for group in groups:
            for i in group:
                found.extend(e for p, e in self._buckets[i].entries.items() if p not in exclude)
            if len(found) >= count:
                break
        t = target.value
        best = heapq.nsmallest(count, found, key=lambda e: e.key.value ^ t)
        return [e.peer for e in best]

    def __contains__(self, peer: object) -> bool:
        return isinstance(peer, PeerId) and peer in self._bucket_of(peer).entries

    def __len__(self) -> int:
        return sum(len(b.entries) for b in self._buckets)

    def peers(self) -> list[PeerId]:
        return [p for b in self._buckets for p in b.entries]

    def entry(self, peer: PeerId) -> TableEntry | None:
        """A copy of what the table knows of `peer`, or None if it is not in the table."""
        entry = self._bucket_of(peer).entries.get(peer)
        return None if entry is None else dataclasses.replace(entry)

    @property
    def buckets(self) -> list[list[PeerId]]:
        """Each bucket's peers, least recently seen first; the last bucket holds cpl ≥ its index."""
        return [list(b.entries) for b in self._buckets]

    def replacements(self, bucket: int) -> list[PeerId]:
        """The replacement cache of one bucket, most recently seen first."""
        return list(reversed(self._buckets[bucket].replacements))

    def cpl_counts(self) -> Counter[int]:
        """How many table peers share each exact cpl with us (refresh picks its cpls from this)."""
        return Counter(self._cpl(e.key) for b in self._buckets for e in b.entries.values())

    def stale_peers(self, now: float, max_age: float) -> list[PeerId]:
        """Peers not heard from for `max_age` seconds or more: refresh probes them."""
        return [
            e.peer
            for b in self._buckets
            for e in b.entries.values()
            if now - e.last_seen >= max_age
        ]

    # -- persistence ---------------------------------------------------------------------------

    def snapshot(self) -> list[TableEntry]:
        """Copies of every entry, for the durable store."""
        return [dataclasses.replace(e) for b in self._buckets for e in b.entries.values()]

    @classmethod
    def restore(
        cls,
        self_id: PeerId,
        entries: Iterable[TableEntry],
        *,
        k: int = limits.KAD_K,
        replacement_cache_size: int = limits.KAD_REPLACEMENT_CACHE,
        diversity: DiversityFilter | None = None,
        max_failures: int = limits.KAD_MAX_FAILURES,
    ) -> RoutingTable:
        """A table rebuilt from a snapshot, with the same admission rules as `observe`.

        Entries are replayed oldest-seen first; ourselves and duplicates are skipped, and what does
        not fit waits in the replacement caches (or is refused by the diversity filter).
        """
        table = cls(
            self_id,
            k=k,
            replacement_cache_size=replacement_cache_size,
            diversity=diversity,
            max_failures=max_failures,
        )
        for saved in sorted(entries, key=lambda e: e.last_seen):
            if saved.peer != self_id and saved.peer not in table:
                key = Key.for_peer(saved.peer)
                table._admit(dataclasses.replace(saved, key=key), table._cpl(key))
        return table
