"""The routing table as a service (kad-dht.md §9): who gets in, who is probed, who is evicted,
and where each peer is dialed.

`RoutingTable` decides (it never pings); this module acts on its decisions:
- a DHT server we hear of is offered to the table; a full bucket makes us probe its
  least-recently-seen peer and evict it only if the probe fails;
- a peer that fails requests repeatedly is evicted and its bucket backfilled;
- addresses come from the transport (connections, identify) first, then from our address book.

`TableKeeper` is an async context manager: its task group runs the probes that answers trigger.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable, Sequence
from contextlib import AsyncExitStack
from typing import Protocol

from anyio.abc import TaskGroup
from multiaddr import Multiaddr

from shardroute.addrs import addr_group, ip_of
from shardroute.clock import Clock
from shardroute.identity.peer_id import PeerId
from shardroute.kad.address_book import AddressBook
from shardroute.kad.config import DhtConfig
from shardroute.kad.diversity import DiversityFilter, drop_overrepresented
from shardroute.kad.keyspace import Key
from shardroute.kad.messages import PeerInfo
from shardroute.kad.repositories import SavedPeer
from shardroute.kad.requests import RequestClient
from shardroute.kad.routing_table import Admission, RoutingTable
from shardroute.kad.transport import KadTransport
from shardroute.tasks import Service, enter_task_group
from shardroute.wakeup import Wakeup

log = logging.getLogger(__name__)

# Long-lived address entries tolerated before those of departed peers are swept (our choice).
KNOWN_ADDR_FLOOR = 1024


class TableMetrics(Protocol):
    def routing_table_size(self, size: int) -> None: ...

    def peer_evicted(self, reason: str) -> None: ...


def ip_hosts(addrs: Iterable[Multiaddr]) -> list[str]:
    return [str(ip) for addr in addrs if (ip := ip_of(addr)) is not None]


class TableKeeper(Service):
    def __init__(
        self,
        *,
        transport: KadTransport,
        requests: RequestClient,
        config: DhtConfig,
        clock: Clock,
        metrics: TableMetrics | None = None,
    ) -> None:
        self.transport = transport
        self.requests = requests
        self.config = config
        self.clock = clock
        self.metrics = metrics
        self.self_id = transport.self_id
        self.addresses = AddressBook()
        self.diversity = (
            DiversityFilter(exempt_private=config.diversity_exempt_private)
            if config.diversity
            else None
        )
        self.table = RoutingTable(
            self.self_id,
            k=config.k,
            replacement_cache_size=config.replacement_cache_size,
            diversity=self.diversity,
            max_failures=config.max_failures,
        )
        # Fired on every admission and eviction, for whoever waits on the table.
        self.changed = Wakeup()
        # cpl with us -> monotonic time of the last lookup aimed there (any lookup refreshes
        # the bucket it targets, as in go-libp2p-kad-dht; the refresher skips fresh buckets).
        self.bucket_lookup_at: dict[int, float] = {}
        self._probing: set[PeerId] = set()
        self._tg: TaskGroup | None = None

    async def _enter(self, stack: AsyncExitStack) -> None:
        self._tg = await enter_task_group(stack)
        stack.callback(setattr, self, "_tg", None)

    # -- addresses ---------------------------------------------------------------------------

    def addrs_of(self, peer: PeerId) -> tuple[Multiaddr, ...]:
        """The addresses we would dial `peer` at (the transport's first, then ours)."""
        if peer == self.self_id:
            return tuple(self.transport.self_addrs())
        found = self.transport.peer_addrs(peer)
        if found:
            return tuple(found)
        return self.addresses.get(peer, self.clock.monotonic())

    def peer_info(self, peer: PeerId) -> PeerInfo | None:
        """`peer` with the addresses we know, or None if we know none."""
        addrs = self.addrs_of(peer)
        return PeerInfo(peer_id=peer, addrs=addrs) if addrs else None

    def info(self, peer: PeerId) -> PeerInfo:
        return PeerInfo(peer_id=peer, addrs=self.addrs_of(peer))

    def closest_infos(self, key: bytes, count: int, exclude: Collection[PeerId]) -> list[PeerInfo]:
        """Up to `count` table peers nearest `key` that we have addresses for."""
        target = Key.for_bytes(key)
        exclude = {*exclude, self.self_id}
        found: list[PeerInfo] = []
        for want in (count, len(self.table)):
            found = []
            for peer in self.table.nearest(target, want, exclude=exclude):
                info = self.peer_info(peer)
                if info is not None:
                    found.append(info)
                    if len(found) == count:
                        return found
        return found

    def groups(self, addrs: Iterable[Multiaddr]) -> tuple[str, ...]:
        if self.diversity is None:
            return ()
        return self.diversity.groups(ip_hosts(addrs))

    def visible_to(self, peer: PeerId, addrs: Sequence[Multiaddr]) -> tuple[Multiaddr, ...]:
        """Of `addrs`, those `peer` can use (the handler filters its answers with this)."""
        return self.transport.shareable_to(peer, addrs)

    def accepted_from(self, peer: PeerId, addrs: Sequence[Multiaddr]) -> tuple[Multiaddr, ...]:
        """Of the addresses `peer` told us, those we keep and pass on."""
        return self.transport.acceptable_from(peer, addrs) if addrs else ()

    def source_group(self, peer: PeerId) -> str | None:
        """The IP group `peer`'s connection really comes from (exempt ones: None), as the
        diversity filter groups it."""
        real = self.transport.remote_addr(peer)
        if real is None:
            return None
        return addr_group(real, exempt_private=self.config.diversity_exempt_private)

    def learn_closer(self, sender: PeerId, infos: Sequence[PeerInfo]) -> list[PeerId]:
        """Closer peers of one answer worth asking: dialable, not us, within the diversity cap."""
        now = self.clock.monotonic()
        entries: list[tuple[PeerId, Sequence[str]]] = []
        for info in infos[: 2 * self.config.k]:
            if info.peer_id == self.self_id:
                continue
            told = self.accepted_from(sender, info.addrs)
            self.addresses.remember_temp(info.peer_id, told, now)
            addrs = told or self.addrs_of(info.peer_id)
            if addrs:
                # A peer we are connected to counts where its connection comes from.
                real = self.transport.remote_addr(info.peer_id)
                entries.append((info.peer_id, self.groups(addrs if real is None else (real,))))
        if self.diversity is None:
            return [peer for peer, _ in entries]
        return drop_overrepresented(entries, self.diversity.max_per_table)

    def remember_temp(self, peer: PeerId, addrs: Sequence[Multiaddr]) -> None:
        self.addresses.remember_temp(peer, addrs, self.clock.monotonic())

    def snapshot(self) -> list[SavedPeer]:
        """The table with addresses, times in wall-clock seconds, for the durable store."""
        mono, wall = self.clock.monotonic(), self.clock.wall()
        out = []
        for entry in self.table.snapshot():
            useful = None if entry.last_useful is None else wall - (mono - entry.last_useful)
            seen = wall - (mono - entry.last_seen)
            out.append(SavedPeer(entry.peer, self.addrs_of(entry.peer), seen, useful))
        return out

    # -- admission -----------------------------------------------------------------------------

    async def peer_seen(
        self,
        peer: PeerId,
        addrs: Sequence[Multiaddr],
        *,
        is_server: bool,
        remote_addr: Multiaddr | None = None,
    ) -> None:
        """Identify (or a push) told us about `peer`.

        Only DHT servers enter the table; a table peer that is no longer one leaves it. IP
        diversity judges the address its connection comes from (`remote_addr`), not what it
        claims. When the bucket is full its least-recently-seen peer is probed now (this call
        then takes up to the request timeout): alive, it stays and the newcomer waits in the
        replacement cache; dead, it is evicted and the newcomer takes its place.
        """
        if peer == self.self_id:
            return
        if not is_server:
            if peer in self.table:
                log.debug("%s left server mode; removed from the routing table", peer)
                self._evicted("left_server_mode")
            self.table.remove(peer)  # also from a replacement cache
            self._table_changed()
            return
        self.addresses.remember(peer, addrs)
        groups = self._groups_of(peer, addrs, remote_addr)
        result = self.table.observe(peer, self.clock.monotonic(), ip_groups=groups)
        self._after_admission(peer, result.admission)
        if result.admission is Admission.FULL and result.oldest is not None:
            await self.check_liveness(result.oldest)

    def _groups_of(
        self, peer: PeerId, addrs: Sequence[Multiaddr], remote_addr: Multiaddr | None = None
    ) -> tuple[str, ...]:
        """Diversity groups: of the real connection when there is one, else of the claims."""
        real = remote_addr or self.transport.remote_addr(peer)
        return self.groups([real] if real is not None else addrs)

    def answered(self, peer: PeerId) -> None:
        """`peer` answered one of our DHT requests: it is a server and it is alive."""
        groups = self._groups_of(peer, self.addrs_of(peer))
        result = self.table.observe(peer, self.clock.monotonic(), ip_groups=groups, useful=True)
        self._after_admission(peer, result.admission)
        if result.admission is Admission.FULL and result.oldest is not None and self._tg:
            self._tg.start_soon(self.check_liveness, result.oldest)

    def peer_failed(self, peer: PeerId) -> None:
        """A request to `peer` failed; repeated failures evict it and backfill its bucket."""
        if peer not in self.table:
            return
        backfill = self.table.record_failure(peer, self.clock.monotonic())
        if peer not in self.table:
            log.debug("evicted %s after repeated failures; %s takes its place", peer, backfill)
            self._evicted("failures")
            self._table_changed()
            # A cached peer may have left too: it counts once a probe says it is alive.
            if backfill is not None and self._tg is not None:
                self._tg.start_soon(self.check_liveness, backfill)

    def _after_admission(self, peer: PeerId, admission: Admission) -> None:
        if admission in (Admission.ADDED, Admission.UPDATED):
            self.addresses.promote(peer)
        if admission is Admission.ADDED:
            self._table_changed()
        # Long-lived addresses of peers that left the table (and its caches) go now and then.
        table = self.table
        if self.addresses.known_count > max(KNOWN_ADDR_FLOOR, 4 * len(table)):
            keep = set(table.peers())
            for i in range(len(table.buckets)):
                keep.update(table.replacements(i))
            self.addresses.prune(keep)

    async def check_liveness(self, peer: PeerId) -> bool | None:
        """Probe a table peer: alive, it is marked seen; silent, it is evicted and the
        replacement cache backfills its place, each backfill probed in turn before it counts
        (a cached peer may have left too). None if a probe of `peer` is already running or it
        is not in the table."""
        if peer in self._probing or peer not in self.table:
            return None
        first: bool | None = None
        candidate: PeerId | None = peer
        while candidate is not None and candidate not in self._probing:
            self._probing.add(candidate)
            try:
                alive = await self.requests.probe_liveness(
                    self.info(candidate), self.config.request_timeout
                )
            finally:
                self._probing.discard(candidate)
            first = alive if first is None else first
            if alive:
                self.table.confirm_alive(candidate, self.clock.monotonic())
                break
            if candidate not in self.table:
                break
            backfill = self.table.evict(candidate)
            log.debug("evicted unresponsive %s; %s takes its place", candidate, backfill)
            self._evicted("unresponsive")
            self._table_changed()
            candidate = backfill
        return first

    def _table_changed(self) -> None:
        self.changed.fire()
        if self.metrics is not None:
            self.metrics.routing_table_size(len(self.table))

    def _evicted(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.peer_evicted(reason)
