"""The group commit of received provider records, on a real SQLite store: a lone record is
written at once, records arriving during a write are written together after it, and a failed
write fails everyone in its batch and stores none of it."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import anyio
import pytest

from shardroute.errors import StoreError
from shardroute.kad.fairness import default_quota
from shardroute.kad.intake import ProviderIntake
from shardroute.kad.repositories import (
    ProviderQuota,
    ProviderRecord,
    ProviderStore,
    ReceivedRecord,
    Refusal,
)
from shardroute.store.database import SqliteStore
from tests.support.peers import random_peer_id

pytestmark = pytest.mark.anyio

NOW = 1_000_000.0


def received(n: int) -> ReceivedRecord:
    provider = random_peer_id(random.Random(n))
    record = ProviderRecord(bytes([n]) * 32, provider, (), NOW, NOW + 3600)
    return ReceivedRecord(record)


class GatedStore:
    """The real store, each write first waiting for `gate` while a write is held back, and
    every batch it was handed remembered."""

    def __init__(self, inner: ProviderStore) -> None:
        self.inner = inner
        self.batches: list[int] = []
        self.gate: anyio.Event | None = None
        self.entered = anyio.Event()
        self.fail = False

    async def accept_providers(
        self, items: Sequence[ReceivedRecord], quota: ProviderQuota
    ) -> list[Refusal | None]:
        self.batches.append(len(items))
        self.entered.set()
        if self.gate is not None:
            gate, self.gate = self.gate, None
            await gate.wait()
        if self.fail:
            raise StoreError("disk full")
        return await self.inner.accept_providers(items, quota)


async def stored_count(store: SqliteStore) -> int:
    return await store.providers.count(NOW)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    opened = await SqliteStore.open(tmp_path, max_providers_per_key=20)
    try:
        yield opened
    finally:
        await opened.close()


async def test_a_lone_record_is_written_at_once_and_company_waits_for_one_batch(
    store: SqliteStore,
) -> None:
    gated = GatedStore(store.providers)
    intake = ProviderIntake(gated, default_quota())  # type: ignore[arg-type]
    assert await intake.submit(received(0)) is None
    assert gated.batches == [1] and await stored_count(store) == 1

    release = gated.gate = anyio.Event()
    outcomes: dict[int, Refusal | None] = {}

    async def submit(n: int) -> None:
        outcomes[n] = await intake.submit(received(n))

    async with anyio.create_task_group() as tg:
        tg.start_soon(submit, 1)
        await gated.entered.wait()  # record 1 is being written, the others arrive now
        for n in range(2, 12):
            tg.start_soon(submit, n)
        await anyio.wait_all_tasks_blocked()
        assert gated.batches == [1, 1]
        release.set()  # the ten that came meanwhile are one batch after it
    assert gated.batches == [1, 1, 10]
    assert outcomes == {n: None for n in range(1, 12)}
    assert await stored_count(store) == 12


async def test_a_failed_write_fails_its_whole_batch_and_stores_nothing_of_it(
    store: SqliteStore,
) -> None:
    gated = GatedStore(store.providers)
    intake = ProviderIntake(gated, default_quota())  # type: ignore[arg-type]
    release = gated.gate = anyio.Event()
    errors: list[int] = []

    async def submit(n: int) -> None:
        try:
            await intake.submit(received(n))
        except StoreError:
            errors.append(n)

    async with anyio.create_task_group() as tg:
        tg.start_soon(submit, 0)
        await gated.entered.wait()
        for n in range(1, 6):
            tg.start_soon(submit, n)
        await anyio.wait_all_tasks_blocked()
        gated.fail = True
        release.set()
    assert sorted(errors) == list(range(6)) and gated.batches == [1, 5]
    assert await stored_count(store) == 0
    gated.fail = False  # the intake is not stuck: the next record is written
    assert await intake.submit(received(9)) is None
    assert await stored_count(store) == 1
