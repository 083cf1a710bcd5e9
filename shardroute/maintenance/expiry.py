"""The expiry sweep: provider records past their TTL and values past their age are deleted in
bounded batches, every `interval`, on the injected clock."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

import anyio.lowlevel

from shardroute.clock import Clock
from shardroute.errors import StoreError
from shardroute.kad.repositories import ProviderStore, ValueStore

log = logging.getLogger(__name__)

# Expired records deleted per statement (a sweep runs as many as it needs, yielding between).
EXPIRY_BATCH = 1000


class ExpiryMetrics(Protocol):
    def records_expired(self, count: int) -> None: ...


async def in_batches(expire: Callable[[float, int], Awaitable[int]], cutoff: float) -> int:
    """Run a bounded `expire(cutoff, batch)` until a batch comes back short; the total."""
    total = 0
    while (removed := await expire(cutoff, EXPIRY_BATCH)) == EXPIRY_BATCH:
        total += removed
        await anyio.lowlevel.checkpoint()
    return total + removed


class ExpirySweep:
    def __init__(
        self,
        *,
        providers: ProviderStore,
        values: ValueStore,
        clock: Clock,
        interval: float,
        max_value_age: float,
        metrics: ExpiryMetrics | None = None,
    ) -> None:
        self.providers = providers
        self.values = values
        self.clock = clock
        self.interval = interval
        self.max_value_age = max_value_age
        self.metrics = metrics

    async def sweep(self) -> int:
        """One sweep; returns how many provider records went."""
        now = self.clock.wall()
        removed = await in_batches(self.providers.expire, now)
        await in_batches(self.values.expire, now - self.max_value_age)
        orphans = await self.providers.sweep_orphans()
        if orphans:
            log.debug("forgot %d providers without records", orphans)
        if removed:
            if self.metrics is not None:
                self.metrics.records_expired(removed)
            log.info("expired %d provider records", removed)
        return removed

    async def run(self) -> None:
        while True:
            try:
                await self.sweep()
            except StoreError as exc:
                # A full or read-only disk: try again next time; records past their TTL are
                # never served meanwhile (reads filter on expires_at).
                log.warning("expiry sweep failed, retrying in %.0f s: %s", self.interval, exc)
            await self.clock.sleep(self.interval)
