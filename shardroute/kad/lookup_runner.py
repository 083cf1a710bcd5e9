"""Runs the sans-IO `Lookup` over the network (kad-dht.md §8).

At most alpha requests in flight in one task group, each under `fail_after` (the request
timeout), the whole lookup under `move_on_after` (the query timeout); on the query timeout a
lookup returns what it has with `timed_out=True`. A request unanswered for the stall timeout
frees its slot for the next peer and is still heard if it answers. Every peer that answers is
offered to the routing table; one that fails counts a failure against it.
"""

from __future__ import annotations

import logging
import math
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import anyio
from anyio.streams.memory import MemoryObjectSendStream

from shardroute import limits
from shardroute.clock import Clock
from shardroute.identity.peer_id import PeerId
from shardroute.kad.config import DhtConfig
from shardroute.kad.keyspace import Key, common_prefix_len
from shardroute.kad.lookup import Lookup, PeerState
from shardroute.kad.messages import KadMessage
from shardroute.kad.reports import LookupReport
from shardroute.kad.requests import RequestClient
from shardroute.kad.table_keeper import TableKeeper
from shardroute.obs.logging import log_context

log = logging.getLogger(__name__)

# Called with (answering peer, its reply); True ends the lookup (the operation has enough).
AnswerHook = Callable[[PeerId, KadMessage], bool]


class LookupMetrics(Protocol):
    def lookup_finished(
        self, op: str, *, duration: float, requests: int, rounds: int, outcome: str
    ) -> None:
        """`outcome`: found, not_found or timeout (the query timeout ended it empty)."""


@dataclass(frozen=True, slots=True)
class LookupOutcome:
    lookup: Lookup
    duration: float
    timed_out: bool


@dataclass(eq=False, kw_only=True)
class LookupRunner:
    keeper: TableKeeper
    requests: RequestClient
    config: DhtConfig
    clock: Clock
    metrics: LookupMetrics | None = None

    async def run(
        self,
        op: str,
        key: bytes,
        message: KadMessage,
        on_answer: AnswerHook | None = None,
        *,
        found: Callable[[], bool] | None = None,
        alpha: int | None = None,
    ) -> LookupOutcome:
        """Run one lookup. `found` says whether it found what the operation looks for (by
        default: any peer that answered); `alpha` replaces the configured one."""
        table = self.keeper.table
        target = Key.for_bytes(key)
        seeds = table.nearest(target, self.config.k * limits.KAD_LOOKUP_SEEDS_PER_K)
        now = self.clock.monotonic()
        self.keeper.bucket_lookup_at[common_prefix_len(table.self_key, target)] = now
        lookup = Lookup(
            target,
            seeds,
            self_id=self.keeper.self_id,
            k=self.config.k,
            alpha=alpha or self.config.alpha,
            beta=self.config.beta,
        )
        with log_context(query_id=secrets.token_hex(4)):
            if not seeds:
                log.warning("%s %s: the routing table is empty", op, key.hex())
            timed_out = await self._drive(lookup, message, on_answer)
            duration = self.clock.monotonic() - now
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
            hit = found() if found is not None else bool(lookup.result())
            self.metrics.lookup_finished(
                op,
                duration=duration,
                requests=lookup.requests_sent,
                rounds=lookup.rounds,
                outcome="found" if hit else "timeout" if timed_out else "not_found",
            )
        return LookupOutcome(lookup=lookup, duration=duration, timed_out=timed_out)

    def report(self, outcome: LookupOutcome) -> LookupReport:
        return LookupReport(
            peers=[self.keeper.info(p) for p in outcome.lookup.result()],
            requests=outcome.lookup.requests_sent,
            rounds=outcome.lookup.rounds,
            duration=outcome.duration,
            timed_out=outcome.timed_out,
            unreachable=len(outcome.lookup.peers(PeerState.UNREACHABLE)),
        )

    async def _drive(
        self, lookup: Lookup, message: KadMessage, on_answer: AnswerHook | None
    ) -> bool:
        """Run `lookup` to its end or the query timeout; True if the timeout ended it."""
        send, receive = anyio.create_memory_object_stream[tuple[PeerId, KadMessage | None]](
            max_buffer_size=self.config.alpha + self.config.k
        )
        in_flight = 0
        stall = self.config.stall_timeout
        # Requests that hold a slot, with when each was sent: in sending order, oldest first.
        holding: dict[PeerId, float] = {}
        with send, receive:
            async with anyio.create_task_group() as tg:
                with anyio.move_on_after(self.config.query_timeout) as deadline:
                    while True:
                        for peer in lookup.next_queries():
                            tg.start_soon(self._ask, peer, message, send)
                            holding[peer] = anyio.current_time()
                            in_flight += 1
                        if lookup.finished or in_flight == 0:
                            break
                        oldest = next(iter(holding.values()), None)
                        with anyio.move_on_after(
                            math.inf if oldest is None else oldest + stall - anyio.current_time()
                        ):
                            peer, reply = await receive.receive()
                            in_flight -= 1
                            holding.pop(peer, None)
                            self._settle(lookup, peer, message, reply, on_answer)
                            continue
                        now = anyio.current_time()  # the deadlines' clock
                        for peer, sent in list(holding.items()):
                            if now - sent < stall:
                                break  # the rest were sent later
                            del holding[peer]
                            lookup.on_stalled(peer)
                # Requests still in flight are moot now (stopped, finished or timed out).
                tg.cancel_scope.cancel()
        return deadline.cancelled_caught

    async def _ask(
        self,
        peer: PeerId,
        message: KadMessage,
        results: MemoryObjectSendStream[tuple[PeerId, KadMessage | None]],
    ) -> None:
        reply = await self.requests.request(
            self.keeper.info(peer), message, self.config.request_timeout
        )
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
            self.keeper.peer_failed(peer)
            return
        lookup.on_reply(peer, self.keeper.learn_closer(peer, reply.closer_peers))
        self.keeper.answered(peer)
        if on_answer is not None and on_answer(peer, reply):
            lookup.stop()
