"""Keyspace regions for batched republishing (the idea of go-libp2p-kad-dht's sweeping provider).

Providing one key costs a lookup to find its k closest peers. Keys that sit in one region of the
keyspace share those peers, so the republisher asks this map instead: it keeps the peers that
lookups returned and the parts of the keyspace whose peers are all known, and answers "the k
closest peers of x" exactly, from memory, whenever a known-complete prefix of x holds at least k
peers (then x's k closest all lie inside it). Otherwise it names the next lookup to run.

What a lookup proves: its k closest answers C to a target t include every peer p with
t XOR p <= r, r = t XOR (the k-th answer). That ball is a union of keyspace subtrees, one per
set bit of r, so each lookup marks a handful of prefixes complete. Keys sorted by position come
due together, and a region of about k to 2k peers costs two or three lookups however many keys
fall in it. Pure logic: the caller runs the lookups.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Iterable

from shardroute.identity.peer_id import PeerId
from shardroute.kad.keyspace import KEY_BITS, MAX_PREFIX_BITS, Key, random_key_with_prefix
from shardroute.kad.messages import PeerInfo

# Subtrees deeper than this below a lookup's radius are too small to be worth recording.
_DETAIL_BITS = 12


class RegionMap:
    def __init__(self, k: int, *, rng: random.Random | None = None) -> None:
        if k < 1:
            raise ValueError("k must be at least 1")
        self.k = k
        self.rng = rng or random.Random()
        self.lookups = 0
        self._peers: dict[PeerId, int] = {}  # peer -> its keyspace position
        self._infos: dict[PeerId, PeerInfo] = {}
        self._complete: set[tuple[int, int]] = set()  # (prefix, depth) whose peers are all known
        self._partial: set[tuple[int, int]] = set()  # strict ancestors of complete prefixes
        self._whole = False  # the lookup saw fewer than k peers: the network is all known
        # The last region answered from, with its peers, reused by keys sorted into it.
        self._region: tuple[int, int, list[tuple[int, PeerId]]] | None = None
        self.radius_bits: int | None = None  # bit length of the last lookup's radius

    @property
    def known_peers(self) -> int:
        return len(self._peers)

    def estimated_network_size(self) -> int | None:
        """k · 2^256 / radius of the last lookup (None before any)."""
        if self._whole:
            return len(self._peers)
        if self.radius_bits is None:
            return None
        return max(self.k, self.k << (KEY_BITS - self.radius_bits))

    # -- learning -------------------------------------------------------------------------------

    def add_lookup(
        self,
        target: Key,
        closest: Iterable[PeerInfo],
        *,
        timed_out: bool = False,
        unreachable: int = 0,
    ) -> None:
        """Record a lookup's result: the peers that answered, nearest first.

        Only a lookup that ran to its end proves anything about the keyspace. One that timed
        out adds its peers and marks nothing complete. One that ended with fewer than k answers
        saw the whole network only if no peer failed it: a peer that timed out under load may
        have known others (taking such a lookup for the whole network once sent a 100-node
        network's records to whichever few peers the map knew).
        """
        self.lookups += 1
        self._region = None
        infos = list(closest)
        answers = [i.peer_id for i in infos]
        positions = [Key.for_peer(p).value for p in answers]
        for info, position in zip(infos, positions, strict=True):
            self._peers[info.peer_id] = position
            self._infos[info.peer_id] = info
        if timed_out:
            return
        if len(answers) < self.k:
            if unreachable == 0 and answers:
                self._whole = True  # the lookup ran out of peers before k: it saw them all
            return
        radius = max(target.value ^ p for p in positions)
        self.radius_bits = radius.bit_length()
        t = target.value
        # {p : p ^ t <= radius}: for each set bit j of radius, the subtree of depth 256 - j whose
        # top bits are t's XOR radius's above j and t's at j; plus the k-th answer itself.
        lowest = max(0, radius.bit_length() - _DETAIL_BITS)
        for j in range(radius.bit_length() - 1, lowest - 1, -1):
            if radius >> j & 1:
                depth = KEY_BITS - j
                prefix = ((radius >> j) ^ 1) ^ (t >> j)
                self._mark_complete(prefix, depth)

    def _mark_complete(self, prefix: int, depth: int) -> None:
        if self._covered_by_ancestor(prefix, depth):
            return
        self._complete.add((prefix, depth))
        for up in range(1, depth + 1):
            self._partial.add((prefix >> up, depth - up))

    # -- answering ------------------------------------------------------------------------------

    def _covered_by_ancestor(self, prefix: int, depth: int) -> bool:
        return any((prefix >> up, depth - up) in self._complete for up in range(depth + 1))

    def covered(self, prefix: int, depth: int) -> bool:
        """Whether every peer under this prefix is known."""
        if self._whole or self._covered_by_ancestor(prefix, depth):
            return True
        if (prefix, depth) not in self._partial:
            return False
        return self.covered(prefix << 1, depth + 1) and self.covered(prefix << 1 | 1, depth + 1)

    def _peers_under(self, prefix: int, depth: int) -> list[tuple[int, PeerId]]:
        shift = KEY_BITS - depth
        return [(pos, p) for p, pos in self._peers.items() if pos >> shift == prefix]

    def closest(self, key: Key) -> list[PeerInfo] | None:
        """The k closest peers of `key` if the map knows them exactly, else None."""
        x = key.value
        region = self._region
        if region is not None and x >> (KEY_BITS - region[1]) == region[0]:
            members = region[2]
        else:
            found = self._find_region(x)
            if found is None:
                return None
            members = found
        return [self._infos[p] for _, p in heapq.nsmallest(self.k, members, key=lambda e: e[0] ^ x)]

    def nearest_known(self, key: Key) -> list[PeerInfo]:
        """The k known peers nearest `key`: the fallback when lookups could not complete."""
        x = key.value
        best = heapq.nsmallest(self.k, self._peers.items(), key=lambda e: e[1] ^ x)
        return [self._infos[p] for p, _ in best]

    def _find_region(self, x: int) -> list[tuple[int, PeerId]] | None:
        if self._whole:
            self._region = (0, 0, [(pos, p) for p, pos in self._peers.items()])
            return self._region[2]
        # From the deepest prefix of x that has k known peers up to the root: the first that is
        # complete is a region (every peer of x's k closest is inside it).
        members = [(pos, p) for p, pos in self._peers.items()]
        for depth in range(self._deepest_with_k(x, members), -1, -1):
            prefix = x >> (KEY_BITS - depth)
            if self.covered(prefix, depth):
                inside = self._peers_under(prefix, depth)
                if len(inside) >= self.k:
                    self._region = (prefix, depth, inside)
                    return inside
        return None

    def _deepest_with_k(self, x: int, members: list[tuple[int, PeerId]]) -> int:
        cpls = sorted((KEY_BITS - (pos ^ x).bit_length() for pos, _ in members), reverse=True)
        return cpls[self.k - 1] if len(cpls) >= self.k else 0

    def next_target(self, key: Key) -> bytes:
        """A lookup pre-image aimed at the part of the keyspace `closest(key)` still misses."""
        x = key.value
        members = [(pos, p) for p, pos in self._peers.items()]
        depth = self._deepest_with_k(x, members)
        gap = self._uncovered(x >> (KEY_BITS - depth), depth, x)
        prefix, gap_depth = gap if gap is not None else (0, 0)
        if gap_depth > MAX_PREFIX_BITS:
            prefix, gap_depth = prefix >> (gap_depth - MAX_PREFIX_BITS), MAX_PREFIX_BITS
        return random_key_with_prefix(prefix, gap_depth, self.rng)

    def _uncovered(self, prefix: int, depth: int, x: int) -> tuple[int, int] | None:
        """An incomplete prefix under (prefix, depth), preferring the half that holds x."""
        if self.covered(prefix, depth):
            return None
        if (prefix, depth) not in self._partial:
            return prefix, depth
        halves = [prefix << 1, prefix << 1 | 1]
        if depth < KEY_BITS and x >> (KEY_BITS - depth - 1) & 1:
            halves.reverse()
        for half in halves:
            gap = self._uncovered(half, depth + 1, x)
            if gap is not None:
                return gap
        return None
