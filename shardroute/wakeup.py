"""A reusable wake-up for tasks that wait for "something changed" (anyio Events fire once).

On asyncio futures directly: a stream's reader waits on one for every frame, most often with a
deadline, and anyio's `fail_after` (a cancel scope per wait) cost more than the wait itself; a
deadline here is one timer handle.
"""

from __future__ import annotations

import asyncio

_TIMED_OUT = object()


def _expire(waiter: asyncio.Future[object]) -> None:
    if not waiter.done():
        waiter.set_result(_TIMED_OUT)


class Wakeup:
    """`wait()` returns after the next `fire()`."""

    __slots__ = ("_waiters",)

    def __init__(self) -> None:
        # Most fires (a writer woken per frame) find nobody waiting.
        self._waiters: list[asyncio.Future[object]] = []

    def fire(self) -> None:
        if self._waiters:
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    async def wait(self, deadline: float | None = None) -> None:
        """Until the next `fire()`; with `deadline` (loop time, `anyio.current_time()`),
        TimeoutError if that comes first. Cancellable like any anyio checkpoint."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[object] = loop.create_future()
        self._waiters.append(waiter)
        timer = None if deadline is None else loop.call_at(deadline, _expire, waiter)
        try:
            outcome = await waiter
        finally:
            if timer is not None:
                timer.cancel()
            if waiter in self._waiters:  # timed out or cancelled: `fire` did not take it
                self._waiters.remove(waiter)
        if outcome is _TIMED_OUT:
            raise TimeoutError
