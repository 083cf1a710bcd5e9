"""The wake-up every stream and connection task waits on: fires wake every waiter, a deadline
ends one wait with TimeoutError, a cancelled waiter leaves the others waiting."""

from __future__ import annotations

import anyio
import pytest

from shardroute.wakeup import Wakeup

pytestmark = pytest.mark.anyio


async def test_a_fire_wakes_every_waiter_and_only_the_next_fire_counts() -> None:
    wakeup, woken = Wakeup(), []
    wakeup.fire()  # nobody waiting: nothing is kept for later

    async def waiter(n: int) -> None:
        await wakeup.wait()
        woken.append(n)

    async with anyio.create_task_group() as tg:
        for n in range(3):
            tg.start_soon(waiter, n)
        await anyio.wait_all_tasks_blocked()
        assert woken == []
        wakeup.fire()
    assert sorted(woken) == [0, 1, 2]


async def test_a_deadline_ends_the_wait_and_the_wakeup_stays_usable() -> None:
    wakeup = Wakeup()
    started = anyio.current_time()
    with pytest.raises(TimeoutError):
        await wakeup.wait(started + 0.05)
    assert anyio.current_time() - started >= 0.05
    with pytest.raises(TimeoutError):
        await wakeup.wait(started)  # already past: times out at once
    async with anyio.create_task_group() as tg:
        tg.start_soon(wakeup.wait, anyio.current_time() + 5)
        await anyio.wait_all_tasks_blocked()
        wakeup.fire()  # before its deadline: no TimeoutError


async def test_a_cancelled_waiter_leaves_the_others_waiting() -> None:
    wakeup, woken, scopes = Wakeup(), [], []

    async def waiter(name: str) -> None:
        with anyio.CancelScope() as scope:
            scopes.append(scope)
            await wakeup.wait()
            woken.append(name)

    async with anyio.create_task_group() as tg:
        with anyio.move_on_after(0.05) as timed:
            await wakeup.wait()
        assert timed.cancelled_caught
        tg.start_soon(waiter, "cancelled")
        tg.start_soon(waiter, "kept")
        await anyio.wait_all_tasks_blocked()
        scopes[0].cancel()
        await anyio.wait_all_tasks_blocked()
        wakeup.fire()
    assert woken == ["kept"]
