"""Small pieces of structured concurrency shared by the objects that own a task group."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Self

import anyio
from anyio.abc import TaskGroup

AsyncExit = Callable[
    [type[BaseException] | None, BaseException | None, TracebackType | None],
    Awaitable[bool | None],
]


async def exit_unwrapped(
    aexit: AsyncExit,
    exc_type: type[BaseException] | None,
    exc: BaseException | None,
    tb: TracebackType | None,
) -> bool | None:
    """Run an `__aexit__` that leaves a task group. When the body's own exception comes back
    alone in a group, let the exception itself propagate (return False) instead, so callers
    see what they raised and no exception chain is rewritten."""
    try:
        return await aexit(exc_type, exc, tb)
    except BaseExceptionGroup as group:
        if exc is not None and group.exceptions == (exc,):
            return False
        raise


async def enter_task_group(stack: AsyncExitStack) -> TaskGroup:
    """A task group that lives as long as `stack`; leaving the stack cancels its tasks."""
    tg = await stack.enter_async_context(anyio.create_task_group())
    stack.callback(tg.cancel_scope.cancel)
    return tg


class Service:
    """An async context manager that runs things in the background. `_enter` puts whatever it
    starts on an exit stack (task groups, listeners, other services); leaving closes it all in
    reverse order, and the body's own exception comes out as itself."""

    _stack: AsyncExitStack | None = None

    async def _enter(self, stack: AsyncExitStack) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        async with AsyncExitStack() as stack:
            await self._enter(stack)
            self._stack = stack.pop_all()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._stack is not None, "not entered"
        stack, self._stack = self._stack, None
        return await exit_unwrapped(stack.__aexit__, exc_type, exc, tb)
