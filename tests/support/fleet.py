"""Many whole nodes (`App`s) on 127.0.0.1 in the test process: the one harness for tests that
need a network of real nodes.

Each member runs in its own task, so it can be stopped as a crash would stop it: listener and
connections gone at once. On a `FakeClock` (the default) virtual time moves with
`Fleet.run_for`, which jumps from one wake-up to the next once every periodic task is asleep
again; the real network work in between runs in real time. With `SystemClock` the fleet is an
ordinary network of nodes on loopback.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import anyio
from anyio.abc import TaskGroup
from multiaddr import Multiaddr

from shardroute.app import App
from shardroute.clock import Clock, FakeClock
from shardroute.config import Settings
from shardroute.identity.keys import Ed25519PrivateKey
from shardroute.kad.memory_repositories import MemoryStorage
from shardroute.kad.repositories import Storage
from tests.support.nodes import address
from tests.support.settings import loopback

SETTINGS = loopback()


@dataclass
class Member:
    app: App
    stop: anyio.Event = field(default_factory=anyio.Event)
    done: anyio.Event = field(default_factory=anyio.Event)

    @property
    def addr(self) -> Multiaddr:
        return address(self.app)

    @property
    def idle_sleepers(self) -> int:
        """Tasks asleep on the clock when the member is idle: the expiry sweep and the
        publisher always, the refresher once the join finished."""
        return 3 if self.app.joined.is_set() else 2


class Fleet:
    def __init__(self, tg: TaskGroup, clock: Clock, settings: Settings) -> None:
        self.tg = tg
        self.clock = clock
        self.settings = settings
        self.members: list[Member] = []
        self.extra_sleepers = 0  # e.g. a join the test runs itself

    @property
    def live(self) -> list[Member]:
        return [m for m in self.members if not m.done.is_set()]

    async def add(
        self,
        bootstrap: Sequence[Multiaddr] = (),
        *,
        settings: Settings | None = None,
        data_dir: Path | None = None,
        storage: Storage | None = None,
        wait_joined: bool = True,
    ) -> Member:
        """Start a node that joins through `bootstrap`; returns once its join finished. With
        `data_dir` its state is a SQLite file there, else in `storage` or fresh memory."""
        settings = dataclasses.replace(
            settings or self.settings, bootstrap=tuple(str(a) for a in bootstrap)
        )
        if data_dir is not None:
            settings = dataclasses.replace(settings, data_dir=str(data_dir))
        app = App(
            settings,
            identity=Ed25519PrivateKey.generate(),
            storage=None
            if data_dir is not None
            else storage or MemoryStorage(max_providers_per_key=settings.max_providers_per_key),
            clock=self.clock,
        )
        member = Member(app)
        started = anyio.Event()

        async def run() -> None:
            try:
                async with app:
                    started.set()
                    await member.stop.wait()
            finally:
                started.set()
                member.done.set()

        self.tg.start_soon(run)
        await started.wait()
        if member.done.is_set():
            raise RuntimeError("the node did not start")
        self.members.append(member)
        if wait_joined:
            with anyio.fail_after(60):
                await app.joined.wait()
        return member

    async def kill(self, member: Member) -> None:
        member.stop.set()
        await member.done.wait()

    def sleepers(self) -> int:
        return sum(m.idle_sleepers for m in self.live) + self.extra_sleepers

    @property
    def fake_clock(self) -> FakeClock:
        assert isinstance(self.clock, FakeClock), "this fleet runs on real time"
        return self.clock

    async def settle(self) -> None:
        await self.fake_clock.wait_sleepers(self.sleepers(), stall_limit=60)

    async def run_for(self, seconds: float) -> None:
        clock = self.fake_clock
        await clock.run_until(clock.monotonic() + seconds, sleepers=self.sleepers(), stall_limit=60)

    async def close(self) -> None:
        for member in self.live:
            member.stop.set()
        for member in self.members:
            await member.done.wait()


@asynccontextmanager
async def fleet(settings: Settings = SETTINGS, clock: Clock | None = None) -> AsyncIterator[Fleet]:
    async with anyio.create_task_group() as tg:
        crew = Fleet(tg, clock or FakeClock(), settings)
        try:
            yield crew
        finally:
            await crew.close()


async def grow(crew: Fleet, size: int, seeds: int = 3) -> None:
    """Add nodes until the fleet has `size`, each bootstrapping from up to `seeds` earlier ones."""
    rng = random.Random(size)
    while len(crew.members) < size:
        known = [m.addr for m in crew.live]
        await crew.add(rng.sample(known, min(seeds, len(known))))
