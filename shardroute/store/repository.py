"""What every repository shares: its name in metrics, its latency observer, and the
`atomic` decorator its operations run under."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Coroutine
from typing import Any, Concatenate, ParamSpec, TypeVar

import anyio

P = ParamSpec("P")
R = TypeVar("R")
# (operation, seconds): how the store reports its latency (the node feeds a histogram).
StoreObserver = Callable[[str, float], None]


class Repository:
    """A repository's name in metrics and its latency observer."""

    name = ""
    observe: StoreObserver | None = None

    def _observed(self, operation: str, started: float) -> None:
        if self.observe is not None:
            self.observe(f"{self.name}.{operation}", time.perf_counter() - started)


Repo = TypeVar("Repo", bound=Repository)


def atomic(
    fn: Callable[Concatenate[Repo, P], Coroutine[Any, Any, R]],
) -> Callable[Concatenate[Repo, P], Coroutine[Any, Any, R]]:
    """Run a store operation shielded from cancellation (they are short, and one cut off
    inside aiosqlite leaves its connection and thread behind, which stalls the process), and
    report how long it took."""

    async def run(self: Repo, /, *args: P.args, **kwargs: P.kwargs) -> R:
        started = time.perf_counter()
        with anyio.CancelScope(shield=True):
            result = await fn(self, *args, **kwargs)
        self._observed(fn.__name__, started)
        return result

    functools.update_wrapper(run, fn)
    return run
