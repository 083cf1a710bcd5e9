"""The injectable clock.

Intervals and deadlines read `monotonic()`; what is stored or sent (record receive times)
reads `wall()`. Every periodic task (refresh, republish, expiry) waits with `sleep()`, so tests
and the simulator run days of `FakeClock` time in seconds: `FakeClock.advance` wakes the sleepers
whose time has come, and `FakeClock.run_until` jumps from one wake-up to the next.
"""

from __future__ import annotations

import heapq
import itertools
import math
import time
from typing import Protocol

import anyio
import anyio.lowlevel


class Clock(Protocol):
    def monotonic(self) -> float: ...

    def wall(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(max(0.0, seconds))


class FakeClock:
    """A clock that only moves when told to; `sleep` waits for virtual time to pass."""

    def __init__(self, *, start_wall: float = 1_800_000_000.0) -> None:
        self._mono = 0.0
        self._wall = start_wall
        self._order = itertools.count()
        # (deadline, tie-breaker, event) of every task asleep on this clock.
        self._sleepers: list[tuple[float, int, anyio.Event]] = []
        self._changed: anyio.Event | None = None  # made on first wait (needs an event loop)

    def monotonic(self) -> float:
        return self._mono

    def wall(self) -> float:
        return self._wall

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0 or math.isnan(seconds):
            await anyio.lowlevel.checkpoint()
            return
        entry = (self._mono + seconds, next(self._order), anyio.Event())
        heapq.heappush(self._sleepers, entry)
        self._notify()
        try:
            await entry[2].wait()
        finally:
            if not entry[2].is_set():  # cancelled while asleep
                self._sleepers.remove(entry)
                heapq.heapify(self._sleepers)
            self._notify()

    @property
    def sleepers(self) -> int:
        return len(self._sleepers)

    def next_wakeup(self) -> float | None:
        return self._sleepers[0][0] if self._sleepers else None

    def advance(self, seconds: float) -> None:
        """Move time forward and wake every sleeper whose deadline has passed."""
        if seconds < 0:
            raise ValueError("a clock cannot go backwards")
        self._mono += seconds
        self._wall += seconds
        while self._sleepers and self._sleepers[0][0] <= self._mono:
            heapq.heappop(self._sleepers)[2].set()

    async def wait_sleepers(self, count: int, *, stall_limit: float = 60.0) -> None:
        """Wait (in real time) until at least `count` tasks are asleep on this clock."""
        with anyio.fail_after(stall_limit):
            while len(self._sleepers) < count:
                if self._changed is None:
                    self._changed = anyio.Event()
                await self._changed.wait()

    async def run_until(
        self, monotonic: float, *, sleepers: int, stall_limit: float = 60.0
    ) -> None:
        """Jump from wake-up to wake-up until `monotonic`, waiting before each jump until
        `sleepers` tasks are asleep again (all the periodic work in flight has finished)."""
        while True:
            await self.wait_sleepers(sleepers, stall_limit=stall_limit)
            nxt = self.next_wakeup()
            if nxt is None or nxt > monotonic:
                self.advance(max(0.0, monotonic - self._mono))
                await self.wait_sleepers(sleepers, stall_limit=stall_limit)
                return
            self.advance(nxt - self._mono)

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None
