"""The group commit of received provider records: ADD_PROVIDERs arriving together are written
in one transaction; each request waits for its batch, which is the backpressure a flood meets.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import anyio

from shardroute.errors import StoreError
from shardroute.kad.repositories import ProviderQuota, ProviderStore, ReceivedRecord, Refusal


@dataclass(slots=True)
class _Batch:
    items: list[ReceivedRecord] = field(default_factory=list)
    done: anyio.Event = field(default_factory=anyio.Event)
    outcome: Sequence[Refusal | None] = ()
    error: StoreError | None = None


class ProviderIntake:
    """Group commit of received provider records, without waiting for company: the first
    request of a batch takes the write lock, and every request that arrives while it waits
    for the lock (the previous batch being written) joins its batch. One writer at a time,
    each write as large as the load has made it."""

    def __init__(self, store: ProviderStore, quota: ProviderQuota) -> None:
        self.store = store
        self.quota = quota
        self._open: _Batch | None = None
        self._writing = anyio.Lock()

    async def submit(self, item: ReceivedRecord) -> Refusal | None:
        return (await self.submit_many([item]))[0]

    async def submit_many(self, items: Sequence[ReceivedRecord]) -> list[Refusal | None]:
        """Store `items` with the next batch; per item its refusal, if any. StoreError if the
        batch could not be written (nothing of it was stored)."""
        if self._open is None and not self._writing.locked():
            # Nobody writing and nobody waiting: a batch of one needs no event or hand-off,
            # and no shield, as nobody waits on it (a store shields its own transactions).
            self._writing.acquire_nowait()
            try:
                return list(await self.store.accept_providers(items, self.quota))
            finally:
                self._writing.release()
        batch = self._open
        leader = batch is None
        if batch is None:
            batch = self._open = _Batch()
        start = len(batch.items)
        batch.items.extend(items)
        if leader:
            # Shielded: the others wait on this task; a cancelled leader must still write.
            with anyio.CancelScope(shield=True):
                async with self._writing:
                    if self._open is batch:
                        self._open = None  # from here on, newcomers start the next batch
                    try:
                        batch.outcome = await self.store.accept_providers(batch.items, self.quota)
                    except StoreError as exc:
                        batch.error = exc
                    finally:
                        batch.done.set()
        else:
            await batch.done.wait()
        if batch.error is not None:
            raise batch.error
        return list(batch.outcome[start : start + len(items)])
