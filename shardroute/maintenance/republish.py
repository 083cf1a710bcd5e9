"""Announcing and republishing: durable first, then swept over the keyspace.

An announcement is acknowledged once it is committed to SQLite and due now; the publisher takes
what is due, sorts it by keyspace position and asks a `RegionMap` for each shard's k closest
peers, so one or two lookups serve every shard of a region; then every peer gets the ADD_PROVIDER
messages of all its shards on one stream (`Dht.provide_assigned`).

Schedule. Each shard's republish time has a fixed phase in the cycle given by its keyspace
position (go-libp2p-kad-dht's sweeping reprovider does the same), so the shards of one region
come due together and a cycle walks the keyspace once, evenly, instead of bursting. The cycle is
the republish interval, shortened when needed so that it ends `provider_ttl / 24` before the
copies stored at peers expire: receivers never drop a record we still provide. Work is taken
up to one window early, and the window follows the network size (about two regions' worth).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import anyio

from shardroute.clock import Clock
from shardroute.content import ContentId
from shardroute.errors import ShardrouteError, StoreError
from shardroute.kad.dht import Dht
from shardroute.kad.keyspace import KEY_BITS, Key
from shardroute.kad.messages import PeerInfo
from shardroute.kad.regions import RegionMap
from shardroute.kad.repositories import AnnouncementStore
from shardroute.maintenance.backoff import StoreBackoff
from shardroute.obs.metrics import Metrics
from shardroute.wakeup import Wakeup

log = logging.getLogger(__name__)

# Shards taken from the store per pass.
PUBLISH_BATCH = 4096
# A shard no peer took (no peers yet, all failed) is tried again after this long (or an eighth
# of the cycle if that is shorter).
RETRY_DELAY = 30.0
# A region map is trusted this long (or an eighth of the cycle); then the next pass explores
# afresh, as peers come and go.
REGION_MAP_TTL = 1800.0
# Region lookups one shard may cost before one lookup for the shard's own key decides.
MAX_LOOKUPS_PER_SHARD = 8


def republish_cycle(interval: float, provider_ttl: float) -> float:
    """The cycle actually run: the interval, or less so the cycle ends before receivers expire
    our records (margin: a 24th of the TTL, 30 min at 12 h)."""
    return min(interval, provider_ttl - provider_ttl / 24)


def phase(position: Key) -> float:
    """Where in the cycle a shard falls: its keyspace position as a fraction of the keyspace."""
    return position.value / (1 << KEY_BITS)


def next_slot(position: Key, now: float, cycle: float) -> float:
    """The first time after `now` at the shard's phase of the cycle (at most one cycle on)."""
    p = phase(position)
    m = math.floor(now / cycle - p) + 1
    return (m + p) * cycle


class PublicationWait:
    """The first publication of some shards, for an announce that waits for it."""

    def __init__(self, keys: set[bytes]) -> None:
        self._pending = set(keys)
        self._took: list[int] = []
        self._done = anyio.Event()

    def settle(self, accepted: dict[bytes, int]) -> bool:
        """A pass published `accepted` (key -> peers that took it); True once all are in."""
        for key in self._pending & accepted.keys():
            self._took.append(accepted[key])
        self._pending -= accepted.keys()
        if not self._pending:
            self._done.set()
        return not self._pending

    async def stored_on(self) -> int:
        """Wait for every shard's publication; the fewest peers any of them reached."""
        await self._done.wait()
        return min(self._took, default=0)


@dataclass(slots=True)
class PublishStats:
    """Cumulative work of a publisher (the bench and the tests read it)."""

    shards: int = 0  # shard publications that reached at least one peer
    failed: int = 0  # shard publications no peer took
    lookups: int = 0  # region-exploring lookups
    messages: int = 0  # ADD_PROVIDER messages handed to the network
    passes: int = 0


class Publisher:
    def __init__(
        self,
        dht: Dht,
        store: AnnouncementStore,
        clock: Clock,
        *,
        republish_interval: float,
        metrics: Metrics | None = None,
    ) -> None:
        self.dht = dht
        self.store = store
        self.clock = clock
        self.cycle = republish_cycle(republish_interval, dht.config.provider_ttl)
        if self.cycle < republish_interval:
            log.info(
                "republishing every %.0f s: %.0f s would let records lapse at receivers "
                "(provider TTL %.0f s)",
                self.cycle,
                republish_interval,
                dht.config.provider_ttl,
            )
        self.retry_delay = min(RETRY_DELAY, self.cycle / 8)
        self.region_map_ttl = min(REGION_MAP_TTL, self.cycle / 8)
        self.metrics = metrics
        self.stats = PublishStats()
        self._wake = Wakeup()
        self.passed = Wakeup()  # fired after every pass
        self._waits: list[PublicationWait] = []
        self._regions: RegionMap | None = None
        self._regions_at = -math.inf

    # -- the API's side --------------------------------------------------------------------

    async def announce(
        self, cids: Sequence[ContentId], *, wait: bool = False
    ) -> tuple[int, PublicationWait | None]:
        """Durably record the shards as announced and due now, and our own provider records of
        them; how many (each shard once, whatever form named it). With `wait`, also something
        to await their first publication on (the one the background pass makes: there is no
        second)."""
        entries = {c.dht_key: c.codec for c in cids}
        waiting = PublicationWait(set(entries)) if wait else None
        # Written before the wait is registered: a refused write leaves nothing behind, and
        # no pass can start between the two (no await in between).
        count = await self.store.add(list(entries.items()), now=self.clock.wall())
        if waiting is not None:
            self._waits.append(waiting)
        self._wake.fire()
        try:
            await self.dht.record_own(list(entries))
        except ShardrouteError as exc:  # no dialable address yet, a store fault: it waits
            log.info("own records of %d shards wait for their publication: %s", count, exc)
        except BaseException:
            if waiting is not None:
                self.forget(waiting)
            raise
        return count, waiting

    def forget(self, waiting: PublicationWait) -> None:
        """The caller stopped waiting (its deadline passed)."""
        if waiting in self._waits:
            self._waits.remove(waiting)

    async def withdraw(self, cids: Sequence[ContentId]) -> int:
        """Stop announcing; our own record of each goes at once (peers keep theirs until their
        TTL, as in every implementation: there is no un-provide message)."""
        keys = list(dict.fromkeys(c.dht_key for c in cids))
        for key in keys:
            await self.dht.providers.remove_provider(key, self.dht.self_id)
        return await self.store.remove(keys)

    async def drained(self) -> None:
        """Wait until no announced shard is due (tests, benchmarks, graceful callers)."""
        while await self.store.due_count(self.clock.wall()) > 0:
            with anyio.move_on_after(1.0):  # a pass may end between the count and the wait
                await self.passed.wait()

    # -- the sweep -----------------------------------------------------------------------------

    def window(self) -> float:
        """How early due work is taken: about two regions' share of the cycle, 1 to 15 min at
        the default 12 h."""
        size = self._regions.estimated_network_size() if self._regions is not None else None
        share = 1 / 144 if not size else 2 * self.dht.config.k / size
        return min(max(self.cycle * share, self.cycle / 720), self.cycle / 48)

    def _region_map(self) -> RegionMap:
        now = self.clock.monotonic()
        if self._regions is None or now - self._regions_at > self.region_map_ttl:
            self._regions = RegionMap(self.dht.config.k)
            self._regions_at = now
        return self._regions

    async def _assign(self, positions: dict[bytes, Key]) -> dict[bytes, list[PeerInfo]]:
        """Each key's k closest peers, swept in keyspace order; lookups only where the map
        falls short."""
        regions = self._region_map()
        assignments: dict[bytes, list[PeerInfo]] = {}
        for key, position in sorted(positions.items(), key=lambda item: item[1].value):
            peers = regions.closest(position)
            tries = 0
            while peers is None and tries < MAX_LOOKUPS_PER_SHARD:
                target = regions.next_target(position)
                report = await self.dht.get_closest_peers(target)
                tries += 1
                self.stats.lookups += 1
                if self.metrics is not None:
                    self.metrics.republish_lookups_total.inc()
                if not report.peers:
                    break  # nobody answered: retry these shards later
                regions.add_lookup(
                    Key.for_bytes(target),
                    report.peers,
                    timed_out=report.timed_out,
                    unreachable=report.unreachable,
                )
                peers = regions.closest(position)
            if peers is None and tries == MAX_LOOKUPS_PER_SHARD:
                # The map cannot tell (lookups timing out under load): this key's own lookup
                # names its closest peers, which the map's nearest guess may not be.
                report = await self.dht.get_closest_peers(key)
                self.stats.lookups += 1
                if self.metrics is not None:
                    self.metrics.republish_lookups_total.inc()
                peers = report.peers or None
            if peers is None:
                peers = regions.nearest_known(position)
            assignments[key] = peers
        return assignments

    async def publish(self, keys: Sequence[bytes]) -> dict[bytes, int]:
        """Provide `keys` now and schedule each one's next round; peers that took each."""
        # one hash per shard per pass: sorting, region lookup and scheduling all use it
        positions = {key: Key.for_bytes(key) for key in keys}
        if not positions:
            return {}
        assignments = await self._assign(positions)
        accepted = await self.dht.provide_assigned(assignments)
        # Waiting announces hear as soon as peers took the records, not after the schedule's
        # write: what they wait for has happened, and the announcement is already durable.
        for waiting in list(self._waits):
            if waiting.settle(accepted):
                self._waits.remove(waiting)
        now = self.clock.wall()
        # The next slot after this pass's window, or the same shards would be taken again at
        # once; the gap stays under cycle + window < provider TTL.
        after = now + self.window()
        schedule = []
        for key, position in positions.items():
            took = accepted.get(key, 0)
            next_at = (
                now + self.retry_delay if took == 0 else next_slot(position, after, self.cycle)
            )
            schedule.append((key, next_at, took))
        await self.store.reschedule(schedule)
        ok = sum(1 for _, _, took in schedule if took)
        messages = sum(len(p) for p in assignments.values())
        self.stats.shards += ok
        self.stats.failed += len(positions) - ok
        self.stats.messages += messages
        self.stats.passes += 1
        self.passed.fire()
        if self.metrics is not None:
            self.metrics.republished_shards_total.labels("stored").inc(ok)
            self.metrics.republished_shards_total.labels("failed").inc(len(positions) - ok)
            self.metrics.republish_messages_total.inc(messages)
        return accepted

    async def run(self) -> None:
        backoff = StoreBackoff()
        while True:
            try:
                await self._step()
            except StoreError as exc:
                # A full or read-only disk: announcements stay due and go out once it heals.
                await self._sleep_or_wake(backoff.failed("republishing", exc))
            else:
                backoff.succeeded()

    async def _step(self) -> None:
        if not len(self.dht.routing_table):
            # Nobody to publish to yet (start, bootstrap): wait for a peer.
            await self._sleep_or_wake(self.retry_delay, self.dht.table_changed)
            return
        now = self.clock.wall()
        due = await self.store.due(now + self.window(), PUBLISH_BATCH)
        if not due:
            next_at = await self.store.next_due_at()
            # Wake when the next shard is due; the pass then takes a window's worth ahead.
            pause = self.cycle if next_at is None else next_at - now
            await self._sleep_or_wake(pause)
            return
        try:
            await self.publish(due)
        except StoreError:
            raise
        except ShardrouteError as exc:
            # e.g. no dialable address yet: try the same shards again shortly.
            log.warning("publishing %d shards failed: %s", len(due), exc)
            await self.store.reschedule([(k, now + self.retry_delay, 0) for k in due])

    async def _sleep_or_wake(self, seconds: float, *also: Wakeup) -> None:
        """Sleep on the clock until `seconds` pass, a new announcement arrives or one of
        `also` fires."""
        async with anyio.create_task_group() as tg:

            async def first(wait: Callable[[], Awaitable[object]]) -> None:
                await wait()
                tg.cancel_scope.cancel()

            tg.start_soon(first, lambda: self.clock.sleep(seconds))
            for wakeup in (self._wake, *also):
                tg.start_soon(first, wakeup.wait)
