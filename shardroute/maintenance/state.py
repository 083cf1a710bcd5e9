"""What a node keeps of itself while it runs: its routing table saved after every change (so a
restart reconnects to its peers), and the record counts its gauges show."""

from __future__ import annotations

import logging
from typing import Protocol

import anyio

from shardroute.clock import Clock
from shardroute.errors import StoreError
from shardroute.kad.dht import Dht
from shardroute.kad.repositories import AnnouncementStore, ProviderStore, RoutingTableStore
from shardroute.maintenance.backoff import StoreBackoff

# Routing-table changes are saved after this quiet period, so a burst of admissions costs one
# write and a SIGKILL loses at most this much of the table.
SAVE_DEBOUNCE = 1.0
# Record counts are COUNT(*) queries: refreshed on this period, not on every scrape.
COUNTS_INTERVAL = 15.0

log = logging.getLogger(__name__)


class RecordGauges(Protocol):
    def record_counts(self, *, stored: int, announced: int, backlog: int) -> None: ...


async def save_routing_table(dht: Dht, store: RoutingTableStore) -> None:
    """Save the table a moment after each change, until cancelled."""
    backoff = StoreBackoff()
    while True:
        await dht.table_changed.wait()
        await anyio.sleep(SAVE_DEBOUNCE)
        while True:
            try:
                await store.save(dht.keeper.snapshot())
            except StoreError as exc:
                await anyio.sleep(backoff.failed("saving the routing table", exc))
            else:
                backoff.succeeded()
                break


async def count_records(
    providers: ProviderStore,
    announcements: AnnouncementStore,
    clock: Clock,
    gauges: RecordGauges,
) -> None:
    while True:
        now = clock.wall()
        try:
            gauges.record_counts(
                stored=await providers.count(now),
                announced=await announcements.count(),
                backlog=await announcements.due_count(now),
            )
        except StoreError as exc:
            log.warning("counting records failed: %s", exc)
        await anyio.sleep(COUNTS_INTERVAL)
