"""Outbound DHT streams kept between requests, per peer, as go's message sender keeps one: a
request on a kept stream skips opening a stream, negotiating the protocol and closing it on
both sides. This module is the bookkeeping only (which stream to reuse, which to close, which
peers to stop reusing with); `kad.streams` does the IO and passes the time.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from shardroute import limits
from shardroute.identity.peer_id import PeerId
from shardroute.protocol.varint import LengthPrefixedReader


class ReusableStream(Protocol):
    @property
    def reusable(self) -> bool:
        """Open both ways, nothing unread, nothing pending: it can carry another request."""
        ...

    @property
    def unread_bytes(self) -> int: ...


S = TypeVar("S", bound=ReusableStream)


@dataclass(slots=True, eq=False)
class KeptStream(Generic[S]):
    """A stream with the reader of its replies (a reply may end mid-frame in our buffer)."""

    stream: S
    reader: LengthPrefixedReader
    idle_since: float = 0.0


def new_reader() -> LengthPrefixedReader:
    return LengthPrefixedReader(limits.KAD_MAX_MESSAGE)


class StreamPool(Generic[S]):
    """Idle streams per peer, most recently used first, and the peers that broke reuse."""

    def __init__(
        self,
        *,
        per_peer: int = limits.KAD_IDLE_STREAMS_PER_PEER,
        idle: float = limits.KAD_STREAM_IDLE,
        max_failures: int = limits.KAD_STREAM_REUSE_FAILURES,
        remembered: int = limits.KAD_SINGLE_USE_PEERS,
    ) -> None:
        self.per_peer = per_peer
        self.idle = idle
        self.max_failures = max_failures
        self.remembered = remembered
        self._idle: dict[PeerId, list[KeptStream[S]]] = {}
        self._failures: OrderedDict[PeerId, int] = OrderedDict()

    def __len__(self) -> int:
        return sum(len(kept) for kept in self._idle.values())

    def idle_streams(self, peer: PeerId) -> list[S]:
        """The streams kept for `peer`, the next one to be used last."""
        return [kept.stream for kept in self._idle.get(peer, ())]

    def failures(self, peer: PeerId) -> int:
        return self._failures.get(peer, 0)

    def single_use(self, peer: PeerId) -> bool:
        return self.failures(peer) > self.max_failures

    def failed(self, peer: PeerId) -> None:
        """A kept stream to `peer` broke or fell out of step (an answer to something else)."""
        self._failures[peer] = self._failures.get(peer, 0) + 1
        self._failures.move_to_end(peer)
        while len(self._failures) > self.remembered:
            self._failures.popitem(last=False)

    def take(self, peer: PeerId, now: float) -> tuple[KeptStream[S] | None, list[KeptStream[S]]]:
        """A kept stream to use for `peer` (None: open one), and the kept streams found
        unusable on the way, which the caller closes. One that holds bytes nobody asked for
        counts as a failure of reuse."""
        kept = self._idle.get(peer)
        if not kept:
            return None, []
        unusable: list[KeptStream[S]] = []
        found: KeptStream[S] | None = None
        while kept:
            candidate = kept.pop()
            if now - candidate.idle_since < self.idle and candidate.stream.reusable:
                found = candidate
                break
            unusable.append(self._dropped(peer, candidate))
        if not kept:
            del self._idle[peer]
        return found, unusable

    def give_back(self, peer: PeerId, kept: KeptStream[S], now: float) -> bool:
        """Keep `kept` for the next request to `peer`; False: the caller closes it instead."""
        if kept.reader.buffered or not kept.stream.reusable or self.single_use(peer):
            return False
        idle = self._idle.setdefault(peer, [])
        if len(idle) >= self.per_peer:
            return False
        kept.idle_since = now
        idle.append(kept)
        return True

    def expired(self, now: float) -> list[KeptStream[S]]:
        """Remove and return the streams idle too long or no longer usable (to be closed)."""
        gone: list[KeptStream[S]] = []
        for peer, kept in list(self._idle.items()):
            keep = [k for k in kept if now - k.idle_since < self.idle and k.stream.reusable]
            if len(keep) == len(kept):
                continue
            gone += [self._dropped(peer, k) for k in kept if k not in keep]
            if keep:
                self._idle[peer] = keep
            else:
                del self._idle[peer]
        return gone

    def _dropped(self, peer: PeerId, kept: KeptStream[S]) -> KeptStream[S]:
        """`kept`, leaving; holding bytes nobody asked for (an answer to ADD_PROVIDER), it
        counts as a failure of reuse with `peer`."""
        if kept.reader.buffered or kept.stream.unread_bytes:
            self.failed(peer)
        return kept
