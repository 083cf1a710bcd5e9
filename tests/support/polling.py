"""Waiting on a peer whose state changes after an answer we already have (a third-party peer
reads our identify, admits to its table, ... on its own time)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio


async def poll(what: str, check: Callable[[], bool | Awaitable[bool]], seconds: float = 15) -> None:
    """Until `check()` (sync or async) is true; fails naming `what`."""
    with anyio.move_on_after(seconds):
        while True:
            result = check()
            if not isinstance(result, bool):
                result = await result
            if result:
                return
            await anyio.sleep(0.1)
    raise AssertionError(f"not within {seconds} s: {what}")
