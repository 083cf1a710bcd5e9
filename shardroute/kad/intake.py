"""The group commit of received provider records: ADD_PROVIDERs arriving together are written
in one transaction; each request waits for its batch, which is the backpressure a flood meets.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import anyio

from shardroute import limits
from shardroute.errors import StoreError
from shardroute.kad.repositories import ProviderQuota, ProviderStore, ReceivedRecord, Refusal


@dataclass(slots=True)
class _Batch:
    items: list[ReceivedRecord] = field(default_factory=list)
    full: anyio.Event = field(default_factory=anyio.Event)
    done: anyio.Event = field(default_factory=anyio.Event)
    outcome: Sequence[Refusal | None] = ()
    error: StoreError | None = None


class ProviderIntake:
    """Group commit of received provider records. The first request of a batch waits up to
    `max_delay` for company (or until `max_batch`), then writes the batch; the others wait for
    that write. Batches follow one another, so under load they grow by themselves."""

    def __init__(
        self,
        store: ProviderStore,
        quota: ProviderQuota,
        *,
        max_batch: int = limits.KAD_GROUP_COMMIT_RECORDS,
        max_delay: float = limits.KAD_GROUP_COMMIT_DELAY,
    ) -> None:
        self.store = store
        self.quota = quota
        self.max_batch = max_batch
        self.max_delay = max_delay
        self._open: _Batch | None = None
        self.batches = 0

    async def submit(self, item: ReceivedRecord) -> Refusal | None:
        """Store `item` with the next batch; its refusal, if any. StoreError if the batch
        could not be written (nothing of it was stored)."""
        batch = self._open
        leader = batch is None
        if batch is None:
            batch = self._open = _Batch()
        index = len(batch.items)
        batch.items.append(item)
        if len(batch.items) >= self.max_batch:
            batch.full.set()
            if self._open is batch:
                self._open = None
        if leader:
            # Shielded: the others wait on this task; a cancelled leader must still write.
            with anyio.CancelScope(shield=True):
                with anyio.move_on_after(self.max_delay):
                    await batch.full.wait()
                if self._open is batch:
                    self._open = None
                try:
                    batch.outcome = await self.store.accept_providers(batch.items, self.quota)
                except StoreError as exc:
                    batch.error = exc
                finally:
                    self.batches += 1
                    batch.done.set()
        else:
            await batch.done.wait()
        if batch.error is not None:
            raise batch.error
        return batch.outcome[index]
