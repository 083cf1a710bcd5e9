"""Retrying store writes: a store that cannot write (disk full, read-only) is tried again after
a delay that doubles while failures go on, so background tasks log, wait and recover by
themselves when the disk does, and the node keeps serving meanwhile."""

from __future__ import annotations

import logging

from shardroute.errors import StoreError

log = logging.getLogger(__name__)

# First and longest delay before retrying a failed store write.
STORE_RETRY = 1.0
STORE_RETRY_MAX = 60.0


class StoreBackoff:
    """The delay before retrying a failed store write: doubles while failures go on."""

    def __init__(self, first: float = STORE_RETRY, most: float = STORE_RETRY_MAX) -> None:
        self.first = first
        self.most = most
        self.delay = first

    def failed(self, what: str, exc: StoreError) -> float:
        delay = self.delay
        log.warning("%s failed, retrying in %.0f s: %s", what, delay, exc)
        self.delay = min(self.delay * 2, self.most)
        return delay

    def succeeded(self) -> None:
        self.delay = self.first
