"""A reusable wake-up for tasks that wait for "something changed" (anyio Events fire once)."""

from __future__ import annotations

import anyio


class Wakeup:
    """`wait()` returns after the next `fire()`."""

    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event = anyio.Event()

    def fire(self) -> None:
        self._event.set()
        self._event = anyio.Event()

    async def wait(self) -> None:
        await self._event.wait()
