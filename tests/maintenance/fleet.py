"""Many real nodes on 127.0.0.1 in one process, all on one FakeClock.

Each member runs `Node.maintain` (bootstrap, refresh, expiry) in its own task, so members can be
stopped one by one as a crash would stop them: listener and connections gone at once. Virtual
time moves with `Fleet.run_for`, which jumps from one wake-up to the next once every periodic
task is asleep again (the real network work in between runs in real time).
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import anyio
from anyio.abc import TaskGroup
from multiaddr import Multiaddr

from shardroute.addrs import with_p2p
from shardroute.clock import FakeClock
from shardroute.config import Settings
from shardroute.identity.keys import Ed25519PrivateKey
from shardroute.kad.stores import ProviderStore
from shardroute.node import Node

SETTINGS = dataclasses.replace(
    Settings(),
    listen=("/ip4/127.0.0.1/tcp/0",),
    diversity_filter=False,
    request_timeout=2.0,
    query_timeout=10.0,
)


@dataclass
class Member:
    node: Node
    stop: anyio.Event = field(default_factory=anyio.Event)
    done: anyio.Event = field(default_factory=anyio.Event)
    joined: anyio.Event = field(default_factory=anyio.Event)
    # Periodic tasks this member keeps asleep on the clock when idle.
    sleepers: int = 2

    @property
    def addr(self) -> Multiaddr:
        return with_p2p(self.node.host.listen_addrs[0], self.node.peer_id)


class Fleet:
    def __init__(self, tg: TaskGroup, clock: FakeClock, settings: Settings) -> None:
        self.tg = tg
        self.clock = clock
        self.settings = settings
        self.members: list[Member] = []
        self.extra_sleepers = 0  # e.g. a publisher the test runs itself

    @property
    def live(self) -> list[Member]:
        return [m for m in self.members if not m.done.is_set()]

    async def add(
        self,
        bootstrap: Sequence[Multiaddr] = (),
        *,
        providers: ProviderStore | None = None,
        settings: Settings | None = None,
    ) -> Member:
        """Start a node that joins through `bootstrap`; returns once its join finished."""
        started: list[Member] = []
        ready = anyio.Event()

        async def run() -> None:
            node = Node(
                settings or self.settings,
                Ed25519PrivateKey.generate(),
                clock=self.clock,
                providers=providers,
            )
            async with node:
                member = Member(node)
                started.append(member)
                ready.set()
                async with anyio.create_task_group() as tg:

                    async def maintain() -> None:
                        await node.join(bootstrap)
                        member.joined.set()
                        async with anyio.create_task_group() as inner:
                            inner.start_soon(node.sweep_expired)
                            inner.start_soon(node.refresher.run)

                    tg.start_soon(maintain)
                    await member.stop.wait()
                    tg.cancel_scope.cancel()
            member.done.set()

        self.tg.start_soon(run)
        await ready.wait()
        member = started[0]
        self.members.append(member)
        with anyio.fail_after(60):
            await member.joined.wait()
        return member

    async def kill(self, member: Member) -> None:
        member.stop.set()
        await member.done.wait()

    def sleepers(self) -> int:
        return sum(m.sleepers for m in self.live) + self.extra_sleepers

    async def settle(self) -> None:
        await self.clock.wait_sleepers(self.sleepers(), stall_limit=60)

    async def run_for(self, seconds: float) -> None:
        await self.clock.run_until(
            self.clock.monotonic() + seconds, sleepers=self.sleepers(), stall_limit=60
        )

    async def close(self) -> None:
        for member in self.live:
            member.stop.set()
        for member in self.members:
            await member.done.wait()


@asynccontextmanager
async def fleet(settings: Settings = SETTINGS) -> AsyncIterator[Fleet]:
    clock = FakeClock()
    async with anyio.create_task_group() as tg:
        crew = Fleet(tg, clock, settings)
        try:
            yield crew
        finally:
            await crew.close()


async def grow(crew: Fleet, size: int, seeds: int = 3) -> None:
    """Add nodes until the fleet has `size`, each bootstrapping from up to `seeds` earlier ones."""
    import random

    rng = random.Random(size)
    while len(crew.members) < size:
        known = [m.addr for m in crew.live]
        await crew.add(rng.sample(known, min(seeds, len(known))))
