"""A reusable wake-up for tasks that wait for "something changed" (anyio Events fire once)."""

from __future__ import annotations

import anyio


class Wakeup:
    """`wait()` returns after the next `fire()`."""

    __slots__ = ("_event",)

    def __init__(self) -> None:
        # Made by the first waiter: most fires (a writer woken per frame) find nobody waiting.
        self._event: anyio.Event | None = None

    def fire(self) -> None:
        if self._event is not None:
            self._event.set()
            self._event = None

    async def wait(self) -> None:
        if self._event is None:
            self._event = anyio.Event()
        await self._event.wait()
