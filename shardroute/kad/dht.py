"""The DHT facade: one object over the parts of Kademlia, as the rest of shardroute uses it.

Everything goes through a `KadTransport` (kad-dht.md §5 client side, §7 to §10):
- `TableKeeper` (table_keeper.py): the routing table, addresses, admission, liveness probes;
- `RequestClient` (requests.py): one request or batch to one peer, under a deadline;
- `LookupRunner` (lookup_runner.py): the iterative lookup with alpha requests in flight;
- `ProviderRouting` (providers.py) and `ValueRouting` (values.py): the record operations;
- `KadHandler` (handler.py): the server side, installed by whoever owns the transport.

`Dht` is an async context manager: its task group runs the probes that answers trigger and the
producers behind `find_providers`. Leaving it cancels them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from contextlib import AsyncExitStack
from typing import Protocol

from multiaddr import Multiaddr

from shardroute.clock import Clock
from shardroute.identity.peer_id import PeerId
from shardroute.kad.config import DhtConfig, Mode
from shardroute.kad.context import KadContext
from shardroute.kad.fairness import RequestLimiter, default_quota
from shardroute.kad.handler import KadHandler, RefusalReports
from shardroute.kad.intake import ProviderIntake
from shardroute.kad.lookup_runner import LookupMetrics, LookupRunner
from shardroute.kad.messages import KadMessage, MessageType, PeerInfo
from shardroute.kad.providers import ProvideMetrics, ProviderRouting
from shardroute.kad.records import Validator
from shardroute.kad.reports import LookupReport, ProvideReport, PutReport, ValueReport
from shardroute.kad.repositories import ProviderStore, ValueStore
from shardroute.kad.requests import RequestClient, RequestMetrics
from shardroute.kad.routing_table import RoutingTable
from shardroute.kad.table_keeper import TableKeeper, TableMetrics
from shardroute.kad.transport import KadTransport
from shardroute.kad.values import ValueRouting
from shardroute.tasks import Service, enter_task_group
from shardroute.wakeup import Wakeup

log = logging.getLogger(__name__)

__all__ = ["Dht", "DhtConfig", "DhtMetrics", "Mode"]


class DhtMetrics(
    LookupMetrics, RequestMetrics, TableMetrics, ProvideMetrics, RefusalReports, Protocol
):
    """What the Dht reports; the composition root adapts `obs.metrics` to it."""


class Dht(Service):
    def __init__(
        self,
        *,
        transport: KadTransport,
        config: DhtConfig,
        providers: ProviderStore,
        values: ValueStore,
        validator: Validator,
        clock: Clock,
        metrics: DhtMetrics | None = None,
    ) -> None:
        self.requests = RequestClient(transport, metrics)
        self.keeper = TableKeeper(
            transport=transport, requests=self.requests, config=config, clock=clock, metrics=metrics
        )
        # Admission and failures are the keeper's; the facade hands its methods on.
        self.peer_seen = self.keeper.peer_seen
        self.peer_failed = self.keeper.peer_failed
        self.runner = LookupRunner(
            keeper=self.keeper, requests=self.requests, config=config, clock=clock, metrics=metrics
        )
        # What the rest of the node reads off the facade (settings, the stores, who we are).
        self.transport, self.config, self.self_id = transport, config, transport.self_id
        self.providers, self.values = providers, values
        context = KadContext(self.keeper, self.runner, self.requests, config, clock)
        self._providers = ProviderRouting(context, providers, metrics)
        self._values = ValueRouting(context, values, validator)
        self.intake = ProviderIntake(
            providers,
            default_quota(
                per_peer=config.max_records_per_peer,
                per_group=config.max_records_per_ip_group,
                per_key_per_group=config.max_providers_per_key_per_group,
            ),
        )
        self.handler = KadHandler(
            self_id=self.self_id,
            providers=providers,
            values=values,
            validator=validator,
            peers=self.keeper,
            clock=clock,
            config=config,
            intake=self.intake,
            # Real time, not the node's clock: rates protect this machine's CPU and disk.
            limiter=RequestLimiter(time.monotonic),
            refusals=metrics,
        )
        self._mode: Mode = config.mode

    async def _enter(self, stack: AsyncExitStack) -> None:
        await stack.enter_async_context(self.keeper)
        self._providers.attach(await enter_task_group(stack))
        stack.callback(self._providers.attach, None)

    # -- the routing table -----------------------------------------------------------------

    @property
    def routing_table(self) -> RoutingTable:
        return self.keeper.table

    @property
    def table_changed(self) -> Wakeup:
        return self.keeper.changed

    @property
    def bucket_lookup_at(self) -> dict[int, float]:
        return self.keeper.bucket_lookup_at

    async def check_liveness(self, peer: PeerId) -> bool | None:
        return await self.keeper.check_liveness(peer)

    def addrs_of(self, peer: PeerId) -> tuple[Multiaddr, ...]:
        return self.keeper.addrs_of(peer)

    def peer_info(self, peer: PeerId) -> PeerInfo | None:
        return self.keeper.peer_info(peer)

    # -- modes -------------------------------------------------------------------------------

    @property
    def mode(self) -> Mode:
        return self._mode

    def set_mode(self, mode: Mode) -> None:
        """Record the mode; whoever owns the transport installs or removes the handler."""
        if mode not in ("server", "client"):
            raise ValueError(f"mode must be 'server' or 'client', not {mode!r}")
        if mode != self._mode:
            log.info("DHT mode %s -> %s", self._mode, mode)
        self._mode = mode

    # -- peers -------------------------------------------------------------------------------

    async def get_closest_peers(self, key: bytes) -> LookupReport:
        """The k peers closest to `key` (a pre-image: peer id bytes, multihash, record key)."""
        message = KadMessage(type=MessageType.FIND_NODE, key=key)
        return self.runner.report(await self.runner.run("find_node", key, message))

    async def find_peer(self, peer: PeerId) -> PeerInfo | None:
        """`peer`'s addresses: from the table if we hold it, else from a FIND_NODE lookup."""
        if peer == self.self_id or peer in self.routing_table:
            known = self.peer_info(peer)
            if known is not None:
                return known
        found: list[PeerInfo] = []

        def on_answer(sender: PeerId, reply: KadMessage) -> bool:
            if sender == peer:
                found.append(self.keeper.info(peer))
            else:
                found.extend(i for i in reply.closer_peers if i.peer_id == peer and i.addrs)
            return bool(found)

        message = KadMessage(type=MessageType.FIND_NODE, key=peer.raw)
        await self.runner.run("find_peer", peer.raw, message, on_answer, found=lambda: bool(found))
        return found[0] if found else None

    # -- providers ---------------------------------------------------------------------------

    async def provide(self, cid_key: bytes) -> ProvideReport:
        """Announce that we provide `cid_key` (a CID's multihash) to the k closest peers."""
        return await self._providers.provide(cid_key)

    async def provide_many(
        self, keys: Sequence[bytes], *, concurrency: int = 4
    ) -> list[ProvideReport]:
        return await self._providers.provide_many(keys, concurrency=concurrency)

    async def record_own(self, keys: Sequence[bytes]) -> None:
        await self._providers.record_own(keys)

    async def provide_assigned(
        self, assignments: dict[bytes, list[PeerInfo]], *, record_self: bool = True
    ) -> dict[bytes, int]:
        return await self._providers.provide_assigned(assignments, record_self=record_self)

    def find_providers(
        self, cid_key: bytes, count: int, *, on_report: Callable[[LookupReport], None] | None = None
    ) -> AsyncGenerator[PeerInfo, None]:
        return self._providers.find_providers(cid_key, count, on_report=on_report)

    # -- values ------------------------------------------------------------------------------

    async def put_value(self, key: bytes, value: bytes) -> PutReport:
        return await self._values.put_value(key, value)

    async def get_value(self, key: bytes, *, quorum: int | None = None) -> bytes | None:
        """The best valid value of `key`, or None (see `search_value`)."""
        return (await self._values.search_value(key, quorum=quorum)).value

    async def search_value(self, key: bytes, *, quorum: int | None = None) -> ValueReport:
        return await self._values.search_value(key, quorum=quorum)
