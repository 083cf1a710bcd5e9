"""Value records over the network (kad-dht.md §7): PUT_VALUE to the k closest, GET_VALUE with
quorum, `select` and entry correction."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

import anyio

from shardroute.errors import InvalidRecord
from shardroute.identity.peer_id import PeerId
from shardroute.kad.context import KadContext, KadOperation
from shardroute.kad.keyspace import Key, xor_distance
from shardroute.kad.messages import KadMessage, MessageType, ValueRecord
from shardroute.kad.records import Validator
from shardroute.kad.reports import PutReport, ValueReport
from shardroute.kad.repositories import ValueStore

log = logging.getLogger(__name__)


class ValueRouting(KadOperation):
    def __init__(self, context: KadContext, store: ValueStore, validator: Validator) -> None:
        super().__init__(context)
        self.store = store
        self.validator = validator

    async def local_value(self, key: bytes) -> bytes | None:
        """Our own valid, not too old value of `key`, if we hold one."""
        stored = await self.store.get(key)
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
        old = await self.local_value(key)
        if old is not None and old != value and self.validator.select(key, [value, old]) != 0:
            raise InvalidRecord("cannot replace a better value with a worse one")
        await self.store.put(key, value, now)
        start = self.clock.monotonic()
        outcome = await self.runner.run(
            "put_value", key, KadMessage(type=MessageType.FIND_NODE, key=key)
        )
        targets = outcome.lookup.result()
        accepted = await self._put_to(key, value, targets)
        return PutReport(
            key=key,
            peers=[self.keeper.info(p) for p in targets],
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
            reply = await self.requests.request(
                self.keeper.info(peer), message, self.config.put_timeout
            )
            if reply is None:
                self.keeper.peer_failed(peer)
            # go checks that the answer echoes the value it sent.
            elif reply.record is not None and reply.record.value == value:
                accepted.add(peer)

        async with anyio.create_task_group() as tg:
            for peer in peers:
                tg.start_soon(one, peer)
        return accepted

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
        local = await self.local_value(key)
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

        outcome = await self.runner.run(
            "get_value",
            key,
            KadMessage(type=MessageType.GET_VALUE, key=key),
            on_answer,
            found=lambda: best is not None,
        )
        corrected = 0
        stale: list[PeerId] = []
        if best is not None:
            closest = outcome.lookup.result()
            stale = [p for p in closest if p not in holders]
            corrected = len(await self._put_to(key, best, stale))
            # Our own copy: replace a worse one; take one if we are among the k closest.
            if best != local and (local is not None or self._should_hold(key, closest)):
                await self.store.put(key, best, self.clock.wall())
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
        own = xor_distance(Key.for_peer(self.keeper.self_id), target)
        return own < xor_distance(Key.for_peer(closest[-1]), target)
