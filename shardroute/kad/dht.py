"""The DHT facade: routing-table service, iterative lookups, providers, values, modes.

Everything here goes through a `KadNetwork` (kad-dht.md §5 client side, §7 to §10). The pure parts
(`RoutingTable`, `Lookup`, `KadHandler`, validators, stores) decide; this module owns the
concurrency and the timeouts around them:
- one lookup = at most alpha requests in flight in one task group, each under `fail_after`
  (request timeout), the whole lookup under `move_on_after` (query timeout); on the query
  timeout a lookup returns what it has with `timed_out=True`;
- peers that answer are offered to the routing table; a full bucket makes us probe its
  least-recently-seen peer (FIND_NODE for our own id) and evict it only if that fails;
- addresses from answers are kept for two minutes so the next hop can be dialed.

`Dht` is an async context manager: its task group runs the background probes that lookups
trigger and the producers behind `find_providers`. Leaving it cancels them.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncGenerator, Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Literal, Protocol

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectSendStream
from multiaddr import Multiaddr

from shardroute import limits
from shardroute.clock import Clock
from shardroute.errors import InvalidRecord, KadRequestFailed, LocalProtocolError
from shardroute.identity.peer_id import PeerId
from shardroute.kad.diversity import DiversityFilter, drop_overrepresented
from shardroute.kad.handler import MAX_PROVIDER_KEY, MAX_VALUE_AGE, KadHandler
from shardroute.kad.keyspace import Key, common_prefix_len, xor_distance
from shardroute.kad.lookup import Lookup
from shardroute.kad.messages import KadMessage, MessageType, PeerInfo, ValueRecord
from shardroute.kad.network import KadNetwork
from shardroute.kad.records import Validator
from shardroute.kad.routing_table import Admission, RoutingTable
from shardroute.kad.stores import ProviderRecord, ProviderStore, ValueStore
from shardroute.obs.logging import log_context
from shardroute.wakeup import Signal

log = logging.getLogger(__name__)

Mode = Literal["server", "client"]

# go `TempAddrTTL`: how long addresses learned from an answer stay usable.
TEMP_ADDR_TTL = 120.0
# Entries kept in the short-lived address book before expired ones are swept (our choice).
TEMP_ADDR_CAP = 8192
# Long-lived (table) address entries tolerated before those of departed peers are swept.
KNOWN_ADDR_FLOOR = 1024

# Called with (answering peer, its reply); True ends the lookup (the operation has enough).
AnswerHook = Callable[[PeerId, KadMessage], bool]


class DhtMetrics(Protocol):
    """What the Dht reports; the composition root adapts `obs.metrics` to it."""

    def lookup_finished(
        self, op: str, *, duration: float, requests: int, rounds: int, timed_out: bool
    ) -> None: ...

    def request_finished(self, message_type: str, *, ok: bool) -> None: ...

    def routing_table_size(self, size: int) -> None: ...

    def peer_evicted(self, reason: str) -> None: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class DhtConfig:
    protocol_id: str = "/icn/kad/1.0.0"
    k: int = limits.KAD_K
    alpha: int = limits.KAD_ALPHA
    beta: int = limits.KAD_BETA
    request_timeout: float = 10.0
    query_timeout: float = 10.0
    # PUT_VALUE / ADD_PROVIDER per peer (go `putOperationTimeout`).
    put_timeout: float = 30.0
    provider_ttl: float = 12 * 3600
    # How long a server hands out a provider's addresses (None: go's 24 h, capped at the TTL).
    provider_addr_ttl: float | None = None
    mode: Mode = "server"
    diversity: bool = True
    diversity_exempt_private: bool = True
    replacement_cache_size: int = limits.KAD_REPLACEMENT_CACHE
    max_failures: int = limits.KAD_MAX_FAILURES
    # GET_VALUE: stop after this many valid answers (the local value counts); 0 = whole lookup.
    value_quorum: int = 0
    # Local values older than this are not served or counted (kad-dht.md §3: 48 h).
    max_value_age: float = MAX_VALUE_AGE

    def __post_init__(self) -> None:
        if self.k < 1 or self.alpha < 1 or self.beta < 1:
            raise ValueError("k, alpha and beta must be at least 1")
        for name in ("request_timeout", "query_timeout", "put_timeout", "provider_ttl"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.mode not in ("server", "client"):
            raise ValueError(f"mode must be 'server' or 'client', not {self.mode!r}")
        if self.value_quorum < 0:
            raise ValueError("value_quorum must be >= 0")


@dataclass(frozen=True, slots=True)
class LookupReport:
    """What one lookup found and what it cost.

    `rounds` is `Lookup.rounds`: the longest referral chain that led to a request (seeds are
    round 1). `duration` reads the injected clock's monotonic time.
    """

    peers: list[PeerInfo]  # the k closest peers that answered, nearest first
    requests: int
    rounds: int
    duration: float
    timed_out: bool


@dataclass(frozen=True, slots=True)
class ProvideReport:
    key: bytes
    peers: list[PeerInfo]  # the closest peers we sent ADD_PROVIDER to
    accepted: int  # sends that succeeded (ADD_PROVIDER has no answer: written = accepted)
    requests: int  # lookup requests plus sends
    rounds: int
    duration: float
    timed_out: bool  # the lookup hit the query timeout


@dataclass(frozen=True, slots=True)
class PutReport:
    key: bytes
    peers: list[PeerInfo]
    accepted: int  # PUT_VALUE answers that echoed our record
    requests: int
    rounds: int
    duration: float
    timed_out: bool


@dataclass(frozen=True, slots=True)
class ValueReport:
    key: bytes
    value: bytes | None  # the best valid value found
    responses: int  # valid values counted towards the quorum (a local one included)
    corrected: int  # peers (and ourselves) that were sent the best value in entry correction
    requests: int
    rounds: int
    duration: float
    timed_out: bool


@dataclass(frozen=True, slots=True)
class _Outcome:
    lookup: Lookup
    duration: float
    timed_out: bool


async def _exit_unwrapped(
    tg: TaskGroup,
    exc_type: type[BaseException] | None,
    exc: BaseException | None,
    tb: TracebackType | None,
) -> bool | None:
    """Leave a task group; the body's own exception comes out as itself, not in a group."""
    try:
        return await tg.__aexit__(exc_type, exc, tb)
    except BaseExceptionGroup as group:
        if exc is not None and group.exceptions == (exc,):
            raise exc from None
        raise


def _why(exc: Exception) -> str:
    return str(exc) or f"{type(exc).__name__} (timed out)"


def _ip_hosts(addrs: Iterable[Multiaddr]) -> list[str]:
    hosts = []
    for addr in addrs:
        for proto, value in addr.items():
            if proto.name in ("ip4", "ip6"):
                hosts.append(value)
                break
    return hosts


class _AddressBook:
    """Where to dial peers: long-lived entries for table peers, two-minute ones from answers."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._known: dict[PeerId, tuple[Multiaddr, ...]] = {}
        self._temp: dict[PeerId, tuple[tuple[Multiaddr, ...], float]] = {}

    def remember(self, peer: PeerId, addrs: Sequence[Multiaddr]) -> None:
        if addrs:
            self._known[peer] = tuple(addrs)

    def remember_temp(self, peer: PeerId, addrs: Sequence[Multiaddr]) -> None:
        if not addrs:
            return
        now = self._clock.monotonic()
        self._temp.pop(peer, None)  # re-insert: the dict stays ordered by last update
        self._temp[peer] = (tuple(addrs), now + TEMP_ADDR_TTL)
        if len(self._temp) > TEMP_ADDR_CAP:
            self._temp = {p: e for p, e in self._temp.items() if e[1] > now}
            while len(self._temp) > TEMP_ADDR_CAP:
                del self._temp[next(iter(self._temp))]

    def get(self, peer: PeerId) -> tuple[Multiaddr, ...]:
        known = self._known.get(peer)
        if known:
            return known
        temp = self._temp.get(peer)
        if temp is not None and temp[1] > self._clock.monotonic():
            return temp[0]
        return ()

    def promote(self, peer: PeerId) -> None:
        """`peer` joined the table: keep its temporary addresses for as long as it stays."""
        if peer not in self._known:
            temp = self._temp.get(peer)
            if temp is not None:
                self._known[peer] = temp[0]

    @property
    def known_count(self) -> int:
        return len(self._known)

    def prune(self, keep: Collection[PeerId]) -> None:
        """Forget the long-lived entries of peers that are not in `keep`."""
        self._known = {p: a for p, a in self._known.items() if p in keep}


class Dht:
    def __init__(
        self,
        *,
        network: KadNetwork,
        config: DhtConfig,
        providers: ProviderStore,
        values: ValueStore,
        validator: Validator,
        clock: Clock,
        peer_addrs: Callable[[PeerId], list[Multiaddr]] | None = None,
        metrics: DhtMetrics | None = None,
    ) -> None:
        self.network = network
        self.config = config
        self.providers = providers
        self.values = values
        self.validator = validator
        self.clock = clock
        self.metrics = metrics
        self.self_id = network.self_id
        self._peer_addrs = peer_addrs
        self._addresses = _AddressBook(clock)
        diversity = (
            DiversityFilter(exempt_private=config.diversity_exempt_private)
            if config.diversity
            else None
        )
        self._diversity = diversity
        self.routing_table = RoutingTable(
            self.self_id,
            k=config.k,
            replacement_cache_size=config.replacement_cache_size,
            diversity=diversity,
            max_failures=config.max_failures,
        )
        self.handler = KadHandler(
            self_id=self.self_id,
            providers=providers,
            values=values,
            validator=validator,
            closest_peers=self._closest_infos,
            peer_info=self.peer_info,
            clock=clock,
            k=config.k,
            provider_ttl=config.provider_ttl,
            provider_addr_ttl=config.provider_addr_ttl,
            max_value_age=config.max_value_age,
        )
        self._mode: Mode = config.mode
        self._tg: TaskGroup | None = None
        self._probing: set[PeerId] = set()
        # Fired on every admission and eviction, for whoever waits on the table.
        self.table_changed = Signal()
        # cpl with us -> monotonic time of the last lookup aimed there (any lookup refreshes
        # the bucket it targets, as in go-libp2p-kad-dht; the refresher skips fresh buckets).
        self.bucket_lookup_at: dict[int, float] = {}

    async def __aenter__(self) -> Dht:
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._tg is not None
        tg, self._tg = self._tg, None
        tg.cancel_scope.cancel()
        return await _exit_unwrapped(tg, exc_type, exc, tb)

    # -- modes -------------------------------------------------------------------------------

    @property
    def mode(self) -> Mode:
        return self._mode

    def set_mode(self, mode: Mode) -> None:
        """Record the mode; the host wiring installs or removes the handler and pushes identify."""
        if mode not in ("server", "client"):
            raise ValueError(f"mode must be 'server' or 'client', not {mode!r}")
        if mode != self._mode:
            log.info("DHT mode %s -> %s", self._mode, mode)
        self._mode = mode

    # -- addresses ---------------------------------------------------------------------------

    def addrs_of(self, peer: PeerId) -> tuple[Multiaddr, ...]:
        """The addresses we would dial `peer` at (the host's peerstore first, then ours)."""
        if peer == self.self_id:
            return tuple(self.network.self_addrs())
        if self._peer_addrs is not None:
            found = self._peer_addrs(peer)
            if found:
                return tuple(found)
        return self._addresses.get(peer)

    def peer_info(self, peer: PeerId) -> PeerInfo | None:
        """`peer` with the addresses we know, or None if we know none."""
        addrs = self.addrs_of(peer)
        return PeerInfo(peer_id=peer, addrs=addrs) if addrs else None

    def _info(self, peer: PeerId) -> PeerInfo:
        return PeerInfo(peer_id=peer, addrs=self.addrs_of(peer))

    def _closest_infos(self, key: bytes, count: int, exclude: Collection[PeerId]) -> list[PeerInfo]:
        """For the handler: up to `count` table peers nearest `key`, those we have addresses for."""
        target = Key.for_bytes(key)
        exclude = {*exclude, self.self_id}
        found: list[PeerInfo] = []
        for want in (count, len(self.routing_table)):
            found = []
            for peer in self.routing_table.nearest(target, want, exclude=exclude):
                info = self.peer_info(peer)
                if info is not None:
                    found.append(info)
                    if len(found) == count:
                        return found
        return found

    def _groups(self, addrs: Iterable[Multiaddr]) -> tuple[str, ...]:
        if self._diversity is None:
            return ()
        return self._diversity.groups(_ip_hosts(addrs))

    # -- routing-table service (kad-dht.md §9) ----------------------------------------------

    async def peer_seen(
        self,
        peer: PeerId,
        addrs: Sequence[Multiaddr],
        *,
        is_server: bool,
        ip_groups: Sequence[str] = (),
    ) -> None:
        """Identify (or a push, or an answer) told us about `peer`.

        Only DHT servers enter the table; a table peer that is no longer one leaves it. When the
        bucket is full its least-recently-seen peer is probed now (this call then takes up to
        the request timeout): alive, it stays and the newcomer waits in the replacement cache;
        dead, it is evicted and the newcomer takes its place.
        """
        if peer == self.self_id:
            return
        if not is_server:
            if peer in self.routing_table:
                log.debug("%s left server mode; removed from the routing table", peer)
                self._evicted("left_server_mode")
            self.routing_table.remove(peer)  # also from a replacement cache
            self._table_changed()
            return
        self._addresses.remember(peer, addrs)
        groups = tuple(ip_groups) or self._groups(addrs)
        result = self.routing_table.observe(peer, self.clock.monotonic(), ip_groups=groups)
        self._after_admission(peer, result.admission)
        if result.admission is Admission.FULL and result.oldest is not None:
            await self._probe(result.oldest)

    def peer_failed(self, peer: PeerId) -> None:
        """A request to `peer` failed; repeated failures evict it and backfill its bucket."""
        if peer not in self.routing_table:
            return
        backfill = self.routing_table.record_failure(peer, self.clock.monotonic())
        if peer not in self.routing_table:
            log.debug("evicted %s after repeated failures; %s takes its place", peer, backfill)
            self._evicted("failures")
            self._table_changed()

    def _after_admission(self, peer: PeerId, admission: Admission) -> None:
        if admission in (Admission.ADDED, Admission.UPDATED):
            self._addresses.promote(peer)
        if admission is Admission.ADDED:
            self._table_changed()
        # Long-lived addresses of peers that left the table (and its caches) go now and then.
        table = self.routing_table
        if self._addresses.known_count > max(KNOWN_ADDR_FLOOR, 4 * len(table)):
            keep = set(table.peers())
            for i in range(len(table.buckets)):
                keep.update(table.replacements(i))
            self._addresses.prune(keep)

    def _answered(self, peer: PeerId) -> None:
        """`peer` answered one of our DHT requests: it is a server and it is alive."""
        addrs = self.addrs_of(peer)
        result = self.routing_table.observe(
            peer, self.clock.monotonic(), ip_groups=self._groups(addrs), useful=True
        )
        self._after_admission(peer, result.admission)
        if result.admission is Admission.FULL and result.oldest is not None and self._tg:
            self._tg.start_soon(self._probe, result.oldest)

    async def _probe(self, oldest: PeerId) -> None:
        """Liveness probe of a full bucket's least-recently-seen peer."""
        await self.check_liveness(oldest)

    async def check_liveness(self, peer: PeerId) -> bool | None:
        """Probe a table peer (FIND_NODE for our own id): alive, it is marked seen; silent, it
        is evicted and the replacement cache backfills its place, each backfill probed in turn
        before it counts (a cached peer may have left too). None if a probe of `peer` is
        already running or it is not in the table."""
        if peer in self._probing or peer not in self.routing_table:
            return None
        first: bool | None = None
        candidate: PeerId | None = peer
        while candidate is not None and candidate not in self._probing:
            self._probing.add(candidate)
            try:
                alive = await self._ping(candidate)
            finally:
                self._probing.discard(candidate)
            first = alive if first is None else first
            if alive:
                self.routing_table.confirm_alive(candidate, self.clock.monotonic())
                break
            if candidate not in self.routing_table:
                break
            backfill = self.routing_table.evict(candidate)
            log.debug("evicted unresponsive %s; %s takes its place", candidate, backfill)
            self._evicted("unresponsive")
            self._table_changed()
            candidate = backfill
        return first

    def _table_changed(self) -> None:
        self.table_changed.fire()
        if self.metrics is not None:
            self.metrics.routing_table_size(len(self.routing_table))

    def _evicted(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.peer_evicted(reason)

    async def _request(self, peer: PeerId, message: KadMessage, limit: float) -> KadMessage | None:
        """One request under `fail_after(limit)`; None when it failed (logged and counted)."""
        reply: KadMessage | None = None
        try:
            with anyio.fail_after(limit):
                reply = await self.network.request(self._info(peer), message, timeout=limit)
        except (KadRequestFailed, TimeoutError) as exc:
            log.debug(
                "%s %s to %s failed: %s", message.type.name, message.key.hex(), peer, _why(exc)
            )
        if self.metrics is not None:
            self.metrics.request_finished(message.type.name, ok=reply is not None)
        return reply

    async def _ping(self, peer: PeerId) -> bool:
        # PING is deprecated (answer it, never send it); go and js probe with FIND_NODE.
        message = KadMessage(type=MessageType.FIND_NODE, key=self.self_id.raw)
        reply = await self._request(peer, message, self.config.request_timeout)
        return reply is not None and reply.type is MessageType.FIND_NODE

    # -- the lookup runner (kad-dht.md §8) ---------------------------------------------------

    async def _lookup(
        self, op: str, key: bytes, message: KadMessage, on_answer: AnswerHook | None = None
    ) -> _Outcome:
        target = Key.for_bytes(key)
        seeds = self.routing_table.nearest(target, self.config.k)
        self.bucket_lookup_at[common_prefix_len(self.routing_table.self_key, target)] = (
            self.clock.monotonic()
        )
        lookup = Lookup(
            target,
            seeds,
            self_id=self.self_id,
            k=self.config.k,
            alpha=self.config.alpha,
            beta=self.config.beta,
        )
        query_id = secrets.token_hex(4)
        start = self.clock.monotonic()
        with log_context(query_id=query_id):
            if not seeds:
                log.warning("%s %s: the routing table is empty", op, key.hex())
            timed_out = await self._drive(lookup, message, on_answer)
            duration = self.clock.monotonic() - start
            log.debug(
                "%s %s: %d requests, %d rounds, %d answered, %.3f s%s",
                op,
                key.hex(),
                lookup.requests_sent,
                lookup.rounds,
                len(lookup.result()),
                duration,
                " (timed out)" if timed_out else "",
            )
        if self.metrics is not None:
            self.metrics.lookup_finished(
                op,
                duration=duration,
                requests=lookup.requests_sent,
                rounds=lookup.rounds,
                timed_out=timed_out,
            )
        return _Outcome(lookup=lookup, duration=duration, timed_out=timed_out)

    async def _drive(
        self, lookup: Lookup, message: KadMessage, on_answer: AnswerHook | None
    ) -> bool:
        """Run `lookup` to its end or the query timeout; True if the timeout ended it."""
        send, receive = anyio.create_memory_object_stream[tuple[PeerId, KadMessage | None]](
            max_buffer_size=self.config.alpha + self.config.k
        )
        in_flight = 0
        with send, receive:
            async with anyio.create_task_group() as tg:
                with anyio.move_on_after(self.config.query_timeout) as deadline:
                    while True:
                        for peer in lookup.next_queries():
                            tg.start_soon(self._ask, peer, message, send)
                            in_flight += 1
                        if lookup.finished or in_flight == 0:
                            break
                        peer, reply = await receive.receive()
                        in_flight -= 1
                        self._settle(lookup, peer, message, reply, on_answer)
                # Requests still in flight are moot now (stopped, finished or timed out).
                tg.cancel_scope.cancel()
        return deadline.cancelled_caught

    async def _ask(
        self,
        peer: PeerId,
        message: KadMessage,
        results: MemoryObjectSendStream[tuple[PeerId, KadMessage | None]],
    ) -> None:
        reply = await self._request(peer, message, self.config.request_timeout)
        await results.send((peer, reply))

    def _settle(
        self,
        lookup: Lookup,
        peer: PeerId,
        message: KadMessage,
        reply: KadMessage | None,
        on_answer: AnswerHook | None,
    ) -> None:
        if reply is None or reply.type is not message.type:
            lookup.on_failure(peer)
            self.peer_failed(peer)
            return
        lookup.on_reply(peer, self._accept_closer(reply.closer_peers))
        self._answered(peer)
        if on_answer is not None and on_answer(peer, reply):
            lookup.stop()

    def _accept_closer(self, infos: Sequence[PeerInfo]) -> list[PeerId]:
        """Closer peers of one answer worth asking: dialable, not us, within the diversity cap."""
        entries: list[tuple[PeerId, Sequence[str]]] = []
        for info in infos[: 2 * self.config.k]:
            if info.peer_id == self.self_id:
                continue
            self._addresses.remember_temp(info.peer_id, info.addrs)
            addrs = info.addrs or self.addrs_of(info.peer_id)
            if addrs:
                entries.append((info.peer_id, self._groups(addrs)))
        if self._diversity is None:
            return [peer for peer, _ in entries]
        return drop_overrepresented(entries, self._diversity.max_per_table)

    def _infos(self, peers: Iterable[PeerId]) -> list[PeerInfo]:
        return [self._info(p) for p in peers]

    # -- closest peers and peers ---------------------------------------------------------------

    async def get_closest_peers(self, key: bytes) -> LookupReport:
        """The k peers closest to `key` (a pre-image: peer id bytes, multihash, record key)."""
        outcome = await self._lookup(
            "find_node", key, KadMessage(type=MessageType.FIND_NODE, key=key)
        )
        return self._report(outcome)

    def _report(self, outcome: _Outcome) -> LookupReport:
        return LookupReport(
            peers=self._infos(outcome.lookup.result()),
            requests=outcome.lookup.requests_sent,
            rounds=outcome.lookup.rounds,
            duration=outcome.duration,
            timed_out=outcome.timed_out,
        )

    async def find_peer(self, peer: PeerId) -> PeerInfo | None:
        """`peer`'s addresses: from the table if we hold it, else from a FIND_NODE lookup."""
        if peer == self.self_id:
            return PeerInfo(peer_id=peer, addrs=tuple(self.network.self_addrs()))
        if peer in self.routing_table:
            known = self.peer_info(peer)
            if known is not None:
                return known
        found: list[PeerInfo] = []

        def on_answer(sender: PeerId, reply: KadMessage) -> bool:
            if sender == peer:
                found.append(self._info(peer))
            else:
                found.extend(i for i in reply.closer_peers if i.peer_id == peer and i.addrs)
            return bool(found)

        await self._lookup(
            "find_peer", peer.raw, KadMessage(type=MessageType.FIND_NODE, key=peer.raw), on_answer
        )
        return found[0] if found else None

    # -- providers (kad-dht.md §10) --------------------------------------------------------------

    def _check_provider_key(self, key: bytes) -> None:
        if not 1 <= len(key) <= MAX_PROVIDER_KEY:
            raise LocalProtocolError(
                f"a provider key is a multihash of 1…{MAX_PROVIDER_KEY} bytes, got {len(key)}"
            )

    def _self_provider(self) -> PeerInfo:
        addrs = tuple(self.network.self_addrs())
        if not addrs:
            # Servers drop provider entries without addresses (go refuses to provide too).
            raise LocalProtocolError("cannot provide without a dialable address")
        return PeerInfo(peer_id=self.self_id, addrs=addrs)

    async def _record_self(self, key: bytes, me: PeerInfo) -> None:
        now = self.clock.wall()
        await self.providers.add_provider(
            ProviderRecord(
                key=key,
                provider=self.self_id,
                addrs=me.addrs,
                received_at=now,
                expires_at=now + self.config.provider_ttl,
            )
        )

    async def provide(self, cid_key: bytes) -> ProvideReport:
        """Announce that we provide `cid_key` (a CID's multihash) to the k closest peers."""
        self._check_provider_key(cid_key)
        me = self._self_provider()
        start = self.clock.monotonic()
        await self._record_self(cid_key, me)
        outcome = await self._lookup(
            "provide", cid_key, KadMessage(type=MessageType.FIND_NODE, key=cid_key)
        )
        targets = self._infos(outcome.lookup.result())
        message = KadMessage(type=MessageType.ADD_PROVIDER, key=cid_key, provider_peers=(me,))
        sent = await self._send_all({t.peer_id: [message] for t in targets})
        return ProvideReport(
            key=cid_key,
            peers=targets,
            accepted=len(sent),
            requests=outcome.lookup.requests_sent + len(targets),
            rounds=outcome.lookup.rounds,
            duration=self.clock.monotonic() - start,
            timed_out=outcome.timed_out,
        )

    async def provide_many(
        self, keys: Sequence[bytes], *, concurrency: int = 4
    ) -> list[ProvideReport]:
        """Provide several keys, one lookup each, ADD_PROVIDERs batched on one stream per peer."""
        for key in keys:
            self._check_provider_key(key)
        me = self._self_provider()
        outcomes: dict[bytes, _Outcome] = {}
        limiter = anyio.CapacityLimiter(max(1, concurrency))

        async def one(key: bytes) -> None:
            async with limiter:
                await self._record_self(key, me)
                outcomes[key] = await self._lookup(
                    "provide", key, KadMessage(type=MessageType.FIND_NODE, key=key)
                )

        async with anyio.create_task_group() as tg:
            for key in dict.fromkeys(keys):
                tg.start_soon(one, key)
        batches: dict[PeerId, list[KadMessage]] = {}
        for key, outcome in outcomes.items():
            message = KadMessage(type=MessageType.ADD_PROVIDER, key=key, provider_peers=(me,))
            for peer in outcome.lookup.result():
                batches.setdefault(peer, []).append(message)
        sent = await self._send_all(batches)
        reports = []
        for key in dict.fromkeys(keys):
            outcome = outcomes[key]
            targets = outcome.lookup.result()
            reports.append(
                ProvideReport(
                    key=key,
                    peers=self._infos(targets),
                    accepted=sum(1 for p in targets if p in sent),
                    requests=outcome.lookup.requests_sent + len(targets),
                    rounds=outcome.lookup.rounds,
                    duration=outcome.duration,
                    timed_out=outcome.timed_out,
                )
            )
        return reports

    async def provide_assigned(
        self, assignments: dict[bytes, list[PeerInfo]], *, record_self: bool = True
    ) -> dict[bytes, int]:
        """ADD_PROVIDER each key to the peers chosen for it, every peer's keys on one stream.

        The republisher's path: it already knows each key's k closest peers (a region map), so
        no lookup runs here. Returns, per key, how many of its peers took the stream.
        """
        for key in assignments:
            self._check_provider_key(key)
        me = self._self_provider()
        batches: dict[PeerId, list[KadMessage]] = {}
        infos: dict[PeerId, PeerInfo] = {}
        for key, peers in assignments.items():
            if record_self:
                await self._record_self(key, me)
            message = KadMessage(type=MessageType.ADD_PROVIDER, key=key, provider_peers=(me,))
            for info in peers:
                infos[info.peer_id] = info
                batches.setdefault(info.peer_id, []).append(message)
        sent = await self._send_all(batches, infos)
        return {
            key: sum(1 for i in peers if i.peer_id in sent) for key, peers in assignments.items()
        }

    async def _send_all(
        self, batches: dict[PeerId, list[KadMessage]], infos: dict[PeerId, PeerInfo] | None = None
    ) -> set[PeerId]:
        """Write each peer's messages on one stream, all peers at once; the peers that took them.
        `infos` gives addresses to dial where the caller knows them (else the address book)."""
        sent: set[PeerId] = set()
        timeout = self.config.put_timeout

        async def one(peer: PeerId, messages: list[KadMessage]) -> None:
            try:
                with anyio.fail_after(timeout):
                    info = (infos or {}).get(peer) or self._info(peer)
                    await self.network.send(info, messages, timeout=timeout)
            except (KadRequestFailed, TimeoutError) as exc:
                log.debug("ADD_PROVIDER to %s failed: %s", peer, _why(exc))
                ok = False
            else:
                ok = True
                sent.add(peer)
            if self.metrics is not None:
                for message in messages:
                    self.metrics.request_finished(message.type.name, ok=ok)
            if not ok:
                self.peer_failed(peer)

        async with anyio.create_task_group() as tg:
            for peer, messages in batches.items():
                tg.start_soon(one, peer, messages)
        return sent

    async def find_providers(
        self,
        cid_key: bytes,
        count: int,
        *,
        on_report: Callable[[LookupReport], None] | None = None,
    ) -> AsyncGenerator[PeerInfo, None]:
        """Providers of `cid_key`: local records first, then a GET_PROVIDERS lookup.

        Yields each provider once, as it arrives, and stops after `count`, cancelling the
        requests still in flight; otherwise the lookup runs to its end. `on_report` receives the
        lookup's report when one ran. Needs the Dht entered (its task group runs the lookup).
        """
        self._check_provider_key(cid_key)
        if count < 1:
            return
        seen: set[PeerId] = set()
        for record in await self.providers.get_providers(cid_key, self.clock.wall(), count):
            if record.provider in seen:
                continue
            seen.add(record.provider)
            addrs = record.addrs or self.addrs_of(record.provider)
            yield PeerInfo(peer_id=record.provider, addrs=addrs)
            if len(seen) >= count:
                return
        if self._tg is None:
            raise LocalProtocolError("enter the Dht (async with) before looking up providers")
        send, receive = anyio.create_memory_object_stream[PeerInfo](max_buffer_size=count)
        scope = anyio.CancelScope()
        self._tg.start_soon(
            self._search_providers, cid_key, count - len(seen), seen, send, scope, on_report
        )
        try:
            with receive:
                async for info in receive:
                    yield info
        finally:
            scope.cancel()

    async def _search_providers(
        self,
        key: bytes,
        wanted: int,
        seen: set[PeerId],
        send: MemoryObjectSendStream[PeerInfo],
        scope: anyio.CancelScope,
        on_report: Callable[[LookupReport], None] | None,
    ) -> None:
        emitted = 0

        def on_answer(sender: PeerId, reply: KadMessage) -> bool:
            nonlocal emitted
            for info in reply.provider_peers:
                if info.peer_id in seen:
                    continue
                seen.add(info.peer_id)
                if info.addrs:
                    self._addresses.remember_temp(info.peer_id, info.addrs)
                addrs = info.addrs or self.addrs_of(info.peer_id)
                try:
                    send.send_nowait(PeerInfo(peer_id=info.peer_id, addrs=addrs))
                except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                    return True  # the consumer went away
                emitted += 1
                if emitted >= wanted:
                    return True
            return False

        with scope, send:
            outcome = await self._lookup(
                "get_providers", key, KadMessage(type=MessageType.GET_PROVIDERS, key=key), on_answer
            )
            if on_report is not None:
                on_report(self._report(outcome))

    # -- values (kad-dht.md §7) -------------------------------------------------------------------

    async def _local_value(self, key: bytes) -> bytes | None:
        stored = await self.values.get(key)
        if stored is None:
            return None
        now = self.clock.wall()
        if now - stored.received_at > self.config.max_value_age:
            return None
        try:
            self.validator.validate(key, stored.value, now)
        except InvalidRecord:
            return None
        return stored.value

    async def put_value(self, key: bytes, value: bytes) -> PutReport:
        """Validate, store locally (never over a better value), then PUT_VALUE to the k closest.

        Raises InvalidRecord if the record is invalid or worse than the one we hold.
        """
        now = self.clock.wall()
        self.validator.validate(key, value, now)
        old = await self._local_value(key)
        if old is not None and old != value and self.validator.select(key, [value, old]) != 0:
            raise InvalidRecord("cannot replace a better value with a worse one")
        await self.values.put(key, value, now)
        start = self.clock.monotonic()
        outcome = await self._lookup(
            "put_value", key, KadMessage(type=MessageType.FIND_NODE, key=key)
        )
        targets = outcome.lookup.result()
        accepted = await self._put_to(key, value, targets)
        return PutReport(
            key=key,
            peers=self._infos(targets),
            accepted=len(accepted),
            requests=outcome.lookup.requests_sent + len(targets),
            rounds=outcome.lookup.rounds,
            duration=self.clock.monotonic() - start,
            timed_out=outcome.timed_out,
        )

    async def _put_to(self, key: bytes, value: bytes, peers: Iterable[PeerId]) -> set[PeerId]:
        """PUT_VALUE to every peer at once; the peers whose answer echoed our value."""
        message = KadMessage(
            type=MessageType.PUT_VALUE, key=key, record=ValueRecord(key=key, value=value)
        )
        accepted: set[PeerId] = set()

        async def one(peer: PeerId) -> None:
            reply = await self._request(peer, message, self.config.put_timeout)
            if reply is None:
                self.peer_failed(peer)
            # go checks that the answer echoes the value it sent.
            elif reply.record is not None and reply.record.value == value:
                accepted.add(peer)

        async with anyio.create_task_group() as tg:
            for peer in peers:
                tg.start_soon(one, peer)
        return accepted

    async def get_value(self, key: bytes, *, quorum: int | None = None) -> bytes | None:
        """The best valid value of `key`, or None (see `search_value`)."""
        return (await self.search_value(key, quorum=quorum)).value

    async def search_value(self, key: bytes, *, quorum: int | None = None) -> ValueReport:
        """GET_VALUE lookup with quorum, `select` and entry correction (kad-dht.md §7).

        A valid local value counts as the first response. The lookup stops once `quorum` valid
        values arrived (0: run it to the end). Invalid answers are discarded. Then the k closest
        peers that answered without the best value get it by PUT_VALUE, and our own copy is
        replaced if it was worse.
        """
        quorum = self.config.value_quorum if quorum is None else quorum
        if quorum < 0:
            raise ValueError("quorum must be >= 0")
        start = self.clock.monotonic()
        local = await self._local_value(key)
        best: bytes | None = local
        holders: set[PeerId] = set()
        responses = 1 if local is not None else 0
        if quorum and responses >= quorum:
            return ValueReport(
                key=key,
                value=local,
                responses=responses,
                corrected=0,
                requests=0,
                rounds=0,
                duration=self.clock.monotonic() - start,
                timed_out=False,
            )

        def on_answer(sender: PeerId, reply: KadMessage) -> bool:
            nonlocal best, responses
            record = reply.record
            if record is None:
                return False
            if record.key != key:
                log.debug("GET_VALUE answer from %s names another key", sender)
                return False
            try:
                self.validator.validate(key, record.value, self.clock.wall())
            except InvalidRecord as exc:
                log.debug("invalid record from %s: %s", sender, exc)
                return False
            responses += 1
            if best is None or (
                record.value != best and self.validator.select(key, [best, record.value]) == 1
            ):
                best = record.value
                holders.clear()
            if record.value == best:
                holders.add(sender)
            return bool(quorum) and responses >= quorum

        outcome = await self._lookup(
            "get_value", key, KadMessage(type=MessageType.GET_VALUE, key=key), on_answer
        )
        corrected = 0
        stale: list[PeerId] = []
        if best is not None:
            closest = outcome.lookup.result()
            stale = [p for p in closest if p not in holders]
            corrected = len(await self._put_to(key, best, stale))
            # Our own copy: replace a worse one; take one if we are among the k closest.
            if best != local and (local is not None or self._should_hold(key, closest)):
                await self.values.put(key, best, self.clock.wall())
                corrected += 1
        return ValueReport(
            key=key,
            value=best,
            responses=responses,
            corrected=corrected,
            requests=outcome.lookup.requests_sent + len(stale),
            rounds=outcome.lookup.rounds,
            duration=self.clock.monotonic() - start,
            timed_out=outcome.timed_out,
        )

    def _should_hold(self, key: bytes, closest: Sequence[PeerId]) -> bool:
        """Whether we are among the k closest to `key` (then entry correction includes us)."""
        if len(closest) < self.config.k:
            return True
        target = Key.for_bytes(key)
        return xor_distance(Key.for_peer(self.self_id), target) < xor_distance(
            Key.for_peer(closest[-1]), target
        )
