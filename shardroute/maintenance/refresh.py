"""Routing-table upkeep (kad-dht.md §9): the join lookups, the periodic refresh, liveness checks.

A refresh round is
- the self-lookup (it keeps the nearest buckets full and tells our neighbours we exist);
- one lookup of a random key in each bucket's range, cpl 0 up to the deepest non-empty bucket
  (capped at 15 as in go), skipping buckets a lookup aimed at within the interval;
- a liveness probe of every table peer not heard from within the interval; the silent ones are
  evicted and the replacement cache fills their place.

The round repeats every `interval`; after a round that evicted many peers, or while the table
holds fewer than k peers and the last round changed it, the next one comes after
`interval / 10` (at least `min_interval`) instead. When the table is empty the
bootstrap runs first. All waiting is on the injected clock.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import anyio

from shardroute import limits
from shardroute.clock import Clock
from shardroute.identity.peer_id import PeerId
from shardroute.kad.dht import Dht
from shardroute.kad.keyspace import random_key_in_bucket

if TYPE_CHECKING:
    from shardroute.maintenance.bootstrap import Bootstrapper

log = logging.getLogger(__name__)

# Liveness probes in flight at once.
PROBE_CONCURRENCY = 16
# Bucket lookups in flight at once during a refresh round.
LOOKUP_CONCURRENCY = 4


def deepest_cpl(dht: Dht) -> int:
    """The longest prefix any table peer shares with us (0 for an empty table)."""
    counts = dht.routing_table.cpl_counts()
    return max(counts) if counts else 0


async def lookup_buckets(dht: Dht, cpls: Sequence[int], rng: random.Random) -> None:
    """One lookup of a random key in each bucket of `cpls`, a few at a time."""
    self_key = dht.routing_table.self_key
    limiter = anyio.CapacityLimiter(LOOKUP_CONCURRENCY)

    async def one(cpl: int) -> None:
        async with limiter:
            await dht.get_closest_peers(random_key_in_bucket(self_key, cpl, rng))

    async with anyio.create_task_group() as tg:
        for cpl in cpls:
            tg.start_soon(one, cpl)


class RefreshMetrics(Protocol):
    def refresh_done(self, trigger: str) -> None: ...

    def liveness_checked(self, alive: bool) -> None: ...


@dataclass(frozen=True, slots=True)
class RefreshReport:
    started_at: float  # monotonic
    trigger: str
    lookups: int  # the self-lookup and the bucket lookups
    probed: int
    evicted: int
    table_size: int


class Refresher:
    def __init__(
        self,
        dht: Dht,
        clock: Clock,
        *,
        interval: float,
        min_interval: float = 10.0,
        bootstrapper: Bootstrapper | None = None,
        metrics: RefreshMetrics | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if interval <= 0 or min_interval <= 0:
            raise ValueError("refresh intervals must be positive")
        self.dht = dht
        self.clock = clock
        self.interval = interval
        self.min_interval = min(min_interval, interval)
        self.bootstrapper = bootstrapper
        self.metrics = metrics
        self.rng = rng or random.Random()
        self.last: RefreshReport | None = None

    async def refresh(self, trigger: str = "scheduled") -> RefreshReport:
        now = self.clock.monotonic()
        deepest = min(deepest_cpl(self.dht), limits.KAD_REFRESH_MAX_CPL)
        stale = [
            cpl
            for cpl in range(deepest + 1)
            if now - self.dht.bucket_lookup_at.get(cpl, -float("inf")) >= self.interval
        ]
        await self.dht.get_closest_peers(self.dht.self_id.raw)
        await lookup_buckets(self.dht, stale, self.rng)
        lookups = 1 + len(stale)
        table = self.dht.routing_table
        # Peers a lookup just heard from are fresh; probe the rest that went quiet.
        quiet = table.stale_peers(self.clock.monotonic(), self.interval)
        evicted = 0
        limiter = anyio.CapacityLimiter(PROBE_CONCURRENCY)

        async def probe(peer: PeerId) -> None:
            nonlocal evicted
            async with limiter:
                alive = await self.dht.check_liveness(peer)
            if alive is None:
                return
            if not alive:
                evicted += 1
            if self.metrics is not None:
                self.metrics.liveness_checked(alive)

        async with anyio.create_task_group() as tg:
            for peer in quiet:
                tg.start_soon(probe, peer)
        report = RefreshReport(now, trigger, lookups, len(quiet), evicted, len(table))
        if self.metrics is not None:
            self.metrics.refresh_done(trigger)
        log.info(
            "refresh (%s): %d lookups, %d peers probed, %d evicted, %d in the table",
            trigger,
            lookups,
            len(quiet),
            evicted,
            len(table),
        )
        self.last = report
        return report

    def next_delay(self, report: RefreshReport, size_before: int) -> float:
        """`interval`, or a tenth of it after a burst of evictions, or while the table is short
        of k peers and still changing (a network smaller than k+1 is not worth re-asking)."""
        k = self.dht.config.k
        short = report.table_size < k and report.table_size != size_before
        burst = report.evicted >= max(2, k // 4)
        if short or burst:
            return max(self.min_interval, self.interval / 10)
        return self.interval

    async def run(self) -> None:
        """Refresh forever. The first round comes one interval after the join's lookups."""
        delay = self.interval
        trigger = "scheduled"
        while True:
            await self.clock.sleep(delay)
            if not len(self.dht.routing_table) and self.bootstrapper is not None:
                await self.bootstrapper.bootstrap()
            size_before = len(self.dht.routing_table)
            report = await self.refresh(trigger)
            delay = self.next_delay(report, size_before)
            trigger = "scheduled" if delay == self.interval else "adaptive"
