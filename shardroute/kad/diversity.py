"""IP diversity: cap how many peers of one IP group enter a bucket and the table (kad-dht.md §3).

As go-libp2p-kbucket's peerdiversity with go-libp2p-kad-dht's limits: ≤ 2 peers per IP group
in one bucket (counted by true cpl, so splits don't move counts) and ≤ 3 in the whole table.
A peer with several addresses belongs to every group they fall in and must fit in all of them.
Lookups apply the same table limit to each answer (`drop_overrepresented`), as go's query does.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import TypeVar

from shardroute import limits
from shardroute.addrs import ip_group
from shardroute.identity.peer_id import PeerId

T = TypeVar("T")


def drop_overrepresented(entries: Sequence[tuple[T, Sequence[str]]], limit: int) -> list[T]:
    """Keep the items of one lookup answer whose IP groups each hold at most `limit` of its peers.

    go's rule for answers: when more than `limit` peers of an answer share a group, every peer
    with an address in that group is dropped (a sybil cluster loses all its members, not just
    the surplus). Items keep their order.
    """
    counts: Counter[str] = Counter()
    for _, groups in entries:
        counts.update(set(groups))
    crowded = {g for g, n in counts.items() if n > limit}
    if not crowded:
        return [item for item, _ in entries]
    return [item for item, groups in entries if crowded.isdisjoint(groups)]


class DiversityFilter:
    """Per-bucket and per-table IP-group counts of the peers in one routing table."""

    def __init__(
        self,
        *,
        max_per_bucket: int = limits.KAD_DIVERSITY_PER_BUCKET,
        max_per_table: int = limits.KAD_DIVERSITY_PER_TABLE,
        exempt_private: bool = True,
    ) -> None:
        if max_per_bucket < 1 or max_per_table < 1:
            raise ValueError("diversity limits must be at least 1")
        self.max_per_bucket = max_per_bucket
        self.max_per_table = max_per_table
        self.exempt_private = exempt_private
        self._table: Counter[str] = Counter()
        self._buckets: dict[int, Counter[str]] = {}
        self._members: dict[PeerId, tuple[int, tuple[str, ...]]] = {}

    def groups(self, hosts: Iterable[str]) -> tuple[str, ...]:
        """The distinct groups of a peer's IP addresses, exempt ones left out (see `ip_group`)."""
        found = (ip_group(h, exempt_private=self.exempt_private) for h in hosts)
        return tuple(dict.fromkeys(g for g in found if g is not None))

    def allows(self, bucket: int, groups: Sequence[str]) -> bool:
        """Whether a peer in these groups fits in `bucket` (a cpl). Does not change any count."""
        in_bucket = self._buckets.get(bucket)
        for g in set(groups):
            if self._table[g] >= self.max_per_table:
                return False
            if in_bucket is not None and in_bucket[g] >= self.max_per_bucket:
                return False
        return True

    def add(self, peer: PeerId, bucket: int, groups: Sequence[str]) -> None:
        """Count `peer`; the caller checked `allows` (ValueError if it would not, or if counted)."""
        if peer in self._members:
            raise ValueError(f"{peer} is already counted by the diversity filter")
        if not self.allows(bucket, groups):
            raise ValueError(f"{peer} does not fit the diversity limits of bucket {bucket}")
        unique = tuple(dict.fromkeys(groups))
        self._members[peer] = (bucket, unique)
        if unique:
            self._table.update(unique)
            self._buckets.setdefault(bucket, Counter()).update(unique)

    def remove(self, peer: PeerId) -> None:
        """Stop counting `peer`; a peer that is not counted is ignored."""
        member = self._members.pop(peer, None)
        if member is None:
            return
        bucket, groups = member
        if not groups:
            return
        self._table.subtract(groups)
        in_bucket = self._buckets[bucket]
        in_bucket.subtract(groups)
        for g in groups:
            if self._table[g] == 0:
                del self._table[g]
            if in_bucket[g] == 0:
                del in_bucket[g]
        if not in_bucket:
            del self._buckets[bucket]

    def __contains__(self, peer: object) -> bool:
        return peer in self._members

    def count(self, group: str, bucket: int | None = None) -> int:
        """Peers counted in `group`, in the whole table or in one bucket."""
        if bucket is None:
            return self._table[group]
        return self._buckets.get(bucket, Counter())[group]
