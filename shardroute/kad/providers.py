"""Provider records over the network (kad-dht.md §10): provide, and find who provides.

Providing is a FIND_NODE lookup for the key, then ADD_PROVIDER to the k closest peers (never
answered). Finding reads our own records first, then runs a GET_PROVIDERS lookup that yields
providers as their answers arrive and stops once it has enough.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Callable, Sequence
from typing import Protocol

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectSendStream

from shardroute import limits
from shardroute.errors import LocalProtocolError
from shardroute.identity.peer_id import PeerId
from shardroute.kad.context import KadContext, KadOperation
from shardroute.kad.lookup_runner import LookupOutcome
from shardroute.kad.messages import KadMessage, MessageType, PeerInfo
from shardroute.kad.reports import LookupReport, ProvideReport
from shardroute.kad.repositories import ProviderRecord, ProviderStore

log = logging.getLogger(__name__)


class ProvideMetrics(Protocol):
    def records_published(self, count: int) -> None:
        """Provider records handed to peers (ADD_PROVIDER written)."""


def check_provider_key(key: bytes) -> None:
    if not 1 <= len(key) <= limits.KAD_MAX_PROVIDER_KEY:
        raise LocalProtocolError(
            f"a provider key is a multihash of 1…{limits.KAD_MAX_PROVIDER_KEY} bytes, "
            f"got {len(key)}"
        )


class ProviderRouting(KadOperation):
    def __init__(
        self, context: KadContext, store: ProviderStore, metrics: ProvideMetrics | None = None
    ) -> None:
        super().__init__(context)
        self.store = store
        self.metrics = metrics
        self._tg: TaskGroup | None = None

    def attach(self, tg: TaskGroup | None) -> None:
        """The task group that runs `find_providers`' lookups (the facade's)."""
        self._tg = tg

    def _self_provider(self) -> PeerInfo:
        addrs = self.keeper.addrs_of(self.self_id)
        if not addrs:
            # Servers drop provider entries without addresses (go refuses to provide too).
            raise LocalProtocolError("cannot provide without a dialable address")
        return PeerInfo(peer_id=self.self_id, addrs=addrs)

    async def record_own(self, keys: Sequence[bytes]) -> None:
        """Our own provider records of `keys`, at once (go stores its own before it sends):
        we answer for them before any publication reaches a peer. A soft write: the caller
        holds the durable announcement, and each publication writes them again."""
        await self._record_self(keys, self._self_provider(), durable=False)

    async def _record_self(
        self, keys: Sequence[bytes], me: PeerInfo, *, durable: bool = True
    ) -> None:
        """Our own provider records of `keys`, one write."""
        now = self.clock.wall()
        await self.store.add_providers(
            [
                ProviderRecord(
                    key=key,
                    provider=self.self_id,
                    addrs=me.addrs,
                    received_at=now,
                    expires_at=now + self.config.provider_ttl,
                )
                for key in keys
            ],
            durable=durable,
        )

    def _find_closest(self, key: bytes) -> KadMessage:
        return KadMessage(type=MessageType.FIND_NODE, key=key)

    async def _send(
        self, keys_by_peer: dict[PeerId, list[bytes]], infos: dict[PeerId, PeerInfo]
    ) -> set[PeerId]:
        """ADD_PROVIDER batches, one stream per peer, each naming the addresses of ours that
        peer can use; a peer that fails counts a failure."""
        batches: dict[PeerId, list[KadMessage]] = {}
        for peer, keys in keys_by_peer.items():
            me = PeerInfo(self.self_id, tuple(self.keeper.transport.self_addrs(to=peer)))
            if not me.addrs:
                log.debug("no address of ours that %s could use: not providing to it", peer)
                continue
            batches[peer] = [
                KadMessage(type=MessageType.ADD_PROVIDER, key=key, provider_peers=(me,))
                for key in keys
            ]
            if peer not in infos:
                infos[peer] = self.keeper.info(peer)
        sent = await self.requests.send_batches(batches, infos, self.config.put_timeout)
        for peer in batches.keys() - sent:
            self.keeper.peer_failed(peer)
        if self.metrics is not None:
            self.metrics.records_published(sum(len(batches[p]) for p in sent))
        return sent

    async def provide(self, key: bytes) -> ProvideReport:
        """Announce that we provide `key` (a CID's multihash) to the k closest peers."""
        return (await self.provide_many([key]))[0]

    async def provide_many(
        self, keys: Sequence[bytes], *, concurrency: int = 4
    ) -> list[ProvideReport]:
        """Provide several keys, one lookup each, ADD_PROVIDERs batched on one stream per peer."""
        for key in keys:
            check_provider_key(key)
        me = self._self_provider()
        outcomes: dict[bytes, LookupOutcome] = {}
        limiter = anyio.CapacityLimiter(max(1, concurrency))
        start = self.clock.monotonic()

        async def one(key: bytes) -> None:
            async with limiter:
                await self._record_self([key], me)
                outcomes[key] = await self.runner.run("provide", key, self._find_closest(key))

        async with anyio.create_task_group() as tg:
            for key in dict.fromkeys(keys):
                tg.start_soon(one, key)
        keys_by_peer: dict[PeerId, list[bytes]] = {}
        for key, outcome in outcomes.items():
            for peer in outcome.lookup.result():
                keys_by_peer.setdefault(peer, []).append(key)
        sent = await self._send(keys_by_peer, {})
        single = len(outcomes) == 1
        reports = []
        for key in dict.fromkeys(keys):
            outcome = outcomes[key]
            targets = outcome.lookup.result()
            reports.append(
                ProvideReport(
                    key=key,
                    peers=[self.keeper.info(p) for p in targets],
                    accepted=sum(1 for p in targets if p in sent),
                    requests=outcome.lookup.requests_sent + len(targets),
                    rounds=outcome.lookup.rounds,
                    # One key: the whole operation, sends included; several: each lookup's.
                    duration=self.clock.monotonic() - start if single else outcome.duration,
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
            check_provider_key(key)
        me = self._self_provider()
        keys_by_peer: dict[PeerId, list[bytes]] = {}
        infos: dict[PeerId, PeerInfo] = {}
        if record_self:
            # Soft, as at announce: the durable announcement is what a restart republishes from.
            await self._record_self(list(assignments), me, durable=False)
        for key, peers in assignments.items():
            for info in peers:
                infos[info.peer_id] = info
                keys_by_peer.setdefault(info.peer_id, []).append(key)
        sent = await self._send(keys_by_peer, infos)
        return {
            key: sum(1 for i in peers if i.peer_id in sent) for key, peers in assignments.items()
        }

    async def find_providers(
        self,
        key: bytes,
        count: int,
        *,
        on_report: Callable[[LookupReport], None] | None = None,
    ) -> AsyncGenerator[PeerInfo, None]:
        """Providers of `key`: local records first, then a GET_PROVIDERS lookup.

        Yields each provider once, as it arrives, and stops after `count`, cancelling the
        requests still in flight; otherwise the lookup runs to its end. `on_report` receives the
        lookup's report when one ran.
        """
        check_provider_key(key)
        if count < 1:
            return
        seen: set[PeerId] = set()
        for record in await self.store.get_providers(key, self.clock.wall(), count):
            if record.provider in seen:
                continue
            seen.add(record.provider)
            addrs = record.addrs or self.keeper.addrs_of(record.provider)
            yield PeerInfo(peer_id=record.provider, addrs=addrs)
            if len(seen) >= count:
                return
        if self._tg is None:
            raise LocalProtocolError("enter the Dht (async with) before looking up providers")
        wanted = count - len(seen)
        # Our own record says whether we provide: peers keep their copies of it past a
        # withdrawal (there is no un-provide), so where we hold none, no answer names us.
        seen.add(self.self_id)
        send, receive = anyio.create_memory_object_stream[PeerInfo](max_buffer_size=count)
        scope = anyio.CancelScope()
        self._tg.start_soon(self._search, key, wanted, seen, send, scope, on_report)
        try:
            with receive:
                async for info in receive:
                    yield info
        finally:
            scope.cancel()

    async def _search(
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
                told = self.keeper.accepted_from(sender, info.addrs)
                if told:
                    self.keeper.remember_temp(info.peer_id, told)
                addrs = told or self.keeper.addrs_of(info.peer_id)
                try:
                    send.send_nowait(PeerInfo(peer_id=info.peer_id, addrs=addrs))
                except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                    return True  # the consumer went away
                emitted += 1
                if emitted >= wanted:
                    return True
            return False

        with scope, send:
            outcome = await self.runner.run(
                "get_providers",
                key,
                KadMessage(type=MessageType.GET_PROVIDERS, key=key),
                on_answer,
                found=lambda: emitted > 0,
                alpha=self.config.provider_alpha,
            )
            if on_report is not None:
                on_report(self.runner.report(outcome))
