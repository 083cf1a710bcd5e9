"""What every DHT operation works with, built once by the facade and shared."""

from __future__ import annotations

from dataclasses import dataclass

from shardroute.clock import Clock
from shardroute.kad.config import DhtConfig
from shardroute.kad.lookup_runner import LookupRunner
from shardroute.kad.requests import RequestClient
from shardroute.kad.table_keeper import TableKeeper


@dataclass(frozen=True, slots=True)
class KadContext:
    keeper: TableKeeper
    runner: LookupRunner
    requests: RequestClient
    config: DhtConfig
    clock: Clock


class KadOperation:
    """Base of the DHT's operation groups (providers, values): the context's parts at hand."""

    def __init__(self, context: KadContext) -> None:
        self.keeper = context.keeper
        self.runner = context.runner
        self.requests = context.requests
        self.config = context.config
        self.clock = context.clock
        self.self_id = context.keeper.self_id
