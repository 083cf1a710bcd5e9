"""Where to dial peers the DHT knows: long-lived entries for table peers, short-lived ones
learned from answers (go's `TempAddrTTL`). Plain data; every time is an argument."""

from __future__ import annotations

from collections.abc import Collection, Sequence

from multiaddr import Multiaddr

from shardroute.identity.peer_id import PeerId

# go `TempAddrTTL`: how long addresses learned from an answer stay usable.
TEMP_ADDR_TTL = 120.0
# Entries kept in the short-lived book before expired ones are swept (our choice).
TEMP_ADDR_CAP = 8192


class AddressBook:
    def __init__(self) -> None:
        self._known: dict[PeerId, tuple[Multiaddr, ...]] = {}
        self._temp: dict[PeerId, tuple[tuple[Multiaddr, ...], float]] = {}

    def remember(self, peer: PeerId, addrs: Sequence[Multiaddr]) -> None:
        if addrs:
            self._known[peer] = tuple(addrs)

    def remember_temp(self, peer: PeerId, addrs: Sequence[Multiaddr], now: float) -> None:
        if not addrs:
            return
        self._temp.pop(peer, None)  # re-insert: the dict stays ordered by last update
        self._temp[peer] = (tuple(addrs), now + TEMP_ADDR_TTL)
        if len(self._temp) > TEMP_ADDR_CAP:
            self._temp = {p: e for p, e in self._temp.items() if e[1] > now}
            while len(self._temp) > TEMP_ADDR_CAP:
                del self._temp[next(iter(self._temp))]

    def get(self, peer: PeerId, now: float) -> tuple[Multiaddr, ...]:
        known = self._known.get(peer)
        if known:
            return known
        temp = self._temp.get(peer)
        if temp is not None and temp[1] > now:
            return temp[0]
        return ()

    def promote(self, peer: PeerId) -> None:
        """`peer` joined the table: keep its temporary addresses for as long as it stays."""
        if peer not in self._known:
            temp = self._temp.get(peer)
            if temp is not None:
                self._known[peer] = temp[0]

    @property
    def known_count(self) -> int:
        return len(self._known)

    def prune(self, keep: Collection[PeerId]) -> None:
        """Forget the long-lived entries of peers that are not in `keep`."""
        self._known = {p: a for p, a in self._known.items() if p in keep}
