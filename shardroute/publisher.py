"""Announcing: durable first, then provided on the network by a background publisher.

An announcement is acknowledged once it is committed to SQLite and queued; the publisher then
provides every due shard and schedules its next republish. (Issue 5 replaces the per-shard
provide with region-batched republishing; the durable queue stays the same.)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import anyio

from shardroute.clock import Clock
from shardroute.content import ContentId
from shardroute.errors import ShardrouteError
from shardroute.kad.dht import Dht
from shardroute.store.sqlite import SqliteAnnouncementStore
from shardroute.wakeup import Signal

log = logging.getLogger(__name__)

PUBLISH_BATCH = 256
PUBLISH_CONCURRENCY = 8
# A failed provide (e.g. no peers yet) is tried again after this long.
RETRY_DELAY = 30.0


class Publisher:
    def __init__(
        self, dht: Dht, store: SqliteAnnouncementStore, clock: Clock, *, republish_interval: float
    ) -> None:
        self.dht = dht
        self.store = store
        self.clock = clock
        self.republish_interval = republish_interval
        self._wake = Signal()

    async def announce(self, cids: Sequence[ContentId]) -> int:
        """Durably record the shards as announced and due now; returns how many."""
        count = await self.store.add([(c.dht_key, c.codec) for c in cids], now=self.clock.wall())
        self._wake.fire()
        return count

    async def withdraw(self, cids: Sequence[ContentId]) -> int:
        return await self.store.remove([c.dht_key for c in cids])

    async def publish_now(self, cids: Sequence[ContentId]) -> int:
        """Provide each shard now; returns the fewest peers that accepted a record."""
        fewest: int | None = None
        for cid in cids:
            report = await self.dht.provide(cid.dht_key)
            await self.store.published(
                [cid.dht_key],
                next_at=self.clock.wall() + self.republish_interval,
                stored_on=report.accepted,
            )
            fewest = report.accepted if fewest is None else min(fewest, report.accepted)
        return fewest or 0

    async def run(self) -> None:
        while True:
            while not len(self.dht.routing_table):  # nobody to publish to yet (start, bootstrap)
                await self.dht.table_changed.wait()
            due = await self.store.due(self.clock.wall(), PUBLISH_BATCH)
            if not due:
                # Sleep until the next shard is due, or a new announcement wakes us.
                next_at = await self.store.next_due_at()
                pause = RETRY_DELAY if next_at is None else next_at - self.clock.wall()
                with anyio.move_on_after(max(0.0, min(pause, RETRY_DELAY))):
                    await self._wake.wait()
                continue
            limiter = anyio.CapacityLimiter(PUBLISH_CONCURRENCY)
            async with anyio.create_task_group() as tg:
                for key in due:
                    tg.start_soon(self._publish_one, key, limiter)

    async def _publish_one(self, key: bytes, limiter: anyio.CapacityLimiter) -> None:
        async with limiter:
            try:
                report = await self.dht.provide(key)
            except ShardrouteError as exc:
                log.info("publishing %s failed: %s; retrying later", key.hex(), exc)
                await self.store.published(
                    [key], next_at=self.clock.wall() + RETRY_DELAY, stored_on=0
                )
                return
            retry = report.accepted == 0
            delay = min(RETRY_DELAY, self.republish_interval) if retry else self.republish_interval
            next_at = self.clock.wall() + delay
            await self.store.published([key], next_at=next_at, stored_on=report.accepted)
