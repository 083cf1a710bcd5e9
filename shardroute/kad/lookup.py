"""The iterative Kademlia lookup as a sans-IO state machine (kad-dht.md §8).

The caller asks `next_queries()` whom to send a request to, reports each outcome with
`on_reply` or `on_failure`, and stops when `finished`. No IO, clock or task in here: timeouts are
the caller's, reported as failures, and so is noticing a slow request (`on_stalled`).

How it ends. A lookup SEARCHes with at most alpha requests in flight, always asking the closest
peers it has heard of. Once the beta closest live peers seen have all answered (go's termination
rule) it has converged and goes to FOLLOW_UP: it stops speculating beyond the k closest and only
asks those of the k closest live peers that have not been asked (go's follow-up, still alpha at a
time, and answers still count). It is FINISHED when the k closest live peers seen have all
answered (the classic Kademlia rule; with nothing left to ask this is also starvation), or when
the caller calls `stop()`. `result()` is then the k closest peers that answered.
"""

from __future__ import annotations

import bisect
import enum
import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from shardroute import limits
from shardroute.errors import LocalProtocolError
from shardroute.identity.peer_id import PeerId
from shardroute.kad.keyspace import Key


class PeerState(enum.Enum):
    HEARD = "heard"  # known, not asked yet
    WAITING = "waiting"  # a request is in flight
    QUERIED = "queried"  # answered
    UNREACHABLE = "unreachable"  # the request failed or timed out


class _PeerInput(enum.Enum):
    SENT = "sent"
    ANSWERED = "answered"
    FAILED = "failed"


_PEER_TRANSITIONS: dict[tuple[PeerState, _PeerInput], PeerState] = {
    (PeerState.HEARD, _PeerInput.SENT): PeerState.WAITING,
    (PeerState.WAITING, _PeerInput.ANSWERED): PeerState.QUERIED,
    (PeerState.WAITING, _PeerInput.FAILED): PeerState.UNREACHABLE,
}


class LookupPhase(enum.Enum):
    SEARCHING = "searching"
    FOLLOW_UP = "follow_up"
    FINISHED = "finished"


class _LookupInput(enum.Enum):
    CONVERGED = "converged"  # the beta closest live peers answered
    COMPLETED = "completed"  # the k closest live peers answered (or nobody is left)
    STOPPED = "stopped"  # the caller has what it needs


_PHASE_TRANSITIONS: dict[tuple[LookupPhase, _LookupInput], LookupPhase] = {
    (LookupPhase.SEARCHING, _LookupInput.CONVERGED): LookupPhase.FOLLOW_UP,
    (LookupPhase.SEARCHING, _LookupInput.COMPLETED): LookupPhase.FINISHED,
    (LookupPhase.SEARCHING, _LookupInput.STOPPED): LookupPhase.FINISHED,
    (LookupPhase.FOLLOW_UP, _LookupInput.COMPLETED): LookupPhase.FINISHED,
    (LookupPhase.FOLLOW_UP, _LookupInput.STOPPED): LookupPhase.FINISHED,
    (LookupPhase.FINISHED, _LookupInput.STOPPED): LookupPhase.FINISHED,
}


@dataclass(slots=True)
class _Candidate:
    distance: int
    state: PeerState
    hop: int  # 1 for seeds; one more than the peer whose answer named it first
    stalled: bool = False  # WAITING, but no longer holding an alpha slot


class Lookup:
    """One iterative lookup towards `target`.

    `requests_sent` counts requests handed out by `next_queries`. `rounds` is the length of the
    longest referral chain that led to a request: seeds are hop 1, a peer first named in the
    answer of a hop-h peer is hop h+1, and `rounds` is the highest hop asked so far. With alpha
    requests in flight there are no lock-step rounds; this is the latency-relevant depth.
    """

    def __init__(
        self,
        target: Key,
        seeds: Iterable[PeerId],
        *,
        self_id: PeerId,
        k: int = limits.KAD_K,
        alpha: int = limits.KAD_ALPHA,
        beta: int = limits.KAD_BETA,
        accept: Callable[[PeerId], bool] | None = None,
    ) -> None:
        if k < 1 or alpha < 1 or beta < 1:
            raise ValueError("k, alpha and beta must be at least 1")
        self.target = target
        self.self_id = self_id
        self.k = k
        self.alpha = alpha
        self.beta = beta
        self._accept = accept
        self._target_value = target.value
        self._peers: dict[PeerId, _Candidate] = {}
        # (distance, peer) of every peer not UNREACHABLE, nearest first.
        self._live: list[tuple[int, PeerId]] = []
        self._waiting = 0
        self.phase = LookupPhase.SEARCHING
        self.stopped = False  # stop() ended it, not completion or starvation
        self.requests_sent = 0
        self.rounds = 0
        for peer in seeds:
            if peer != self_id and peer not in self._peers:
                self._hear(peer, Key.for_peer(peer), hop=1)
        self._advance()

    # -- inputs --------------------------------------------------------------------------------

    def next_queries(self) -> list[PeerId]:
        """Peers to send a request to now, nearest first; they become WAITING.

        Never more than alpha in flight, stalled requests not counted. Empty when finished or
        when every useful peer is in flight.
        """
        if self.phase is LookupPhase.FINISHED:
            return []
        slots = self.alpha - self._waiting
        if slots <= 0:
            return []
        window = self._live if self.phase is LookupPhase.SEARCHING else self._live[: self.k]
        heard = (p for _, p in window if self._peers[p].state is PeerState.HEARD)
        picked = list(itertools.islice(heard, slots))
        for peer in picked:
            candidate = self._move(peer, _PeerInput.SENT)
            self.rounds = max(self.rounds, candidate.hop)
        self.requests_sent += len(picked)
        return picked

    def on_reply(self, peer: PeerId, closer: Iterable[PeerId]) -> None:
        """`peer` answered with these closer peers.

        Only the first 2k are read (as go). Ourselves, peers already seen (in any state) and
        peers `accept` refuses are skipped; the target peer itself is never refused. After the
        lookup finished the answer only marks `peer` as QUERIED.
        """
        candidate = self._move(peer, _PeerInput.ANSWERED)
        if self.phase is not LookupPhase.FINISHED:
            for other in itertools.islice(closer, 2 * self.k):
                if other == self.self_id or other in self._peers:
                    continue
                key = Key.for_peer(other)
                if self._accept is None or key == self.target or self._accept(other):
                    self._hear(other, key, hop=candidate.hop + 1)
        self._advance()

    def on_failure(self, peer: PeerId) -> None:
        """The request to `peer` failed or timed out: it is UNREACHABLE for this lookup."""
        candidate = self._move(peer, _PeerInput.FAILED)
        del self._live[bisect.bisect_left(self._live, (candidate.distance, peer))]
        self._advance()

    def on_stalled(self, peer: PeerId) -> None:
        """The request to `peer` is slow: it stays WAITING (its answer or failure still
        counts) but frees its alpha slot, so `next_queries` can ask someone else."""
        candidate = self._peers.get(peer)
        if candidate is None or candidate.state is not PeerState.WAITING:
            raise LocalProtocolError(f"lookup: {peer} has no request in flight to stall")
        if not candidate.stalled:
            candidate.stalled = True
            self._waiting -= 1

    def stop(self) -> None:
        """End the lookup now (e.g. enough providers were found); requests in flight are moot."""
        if self.phase is not LookupPhase.FINISHED:
            self.stopped = True
        self.phase = _PHASE_TRANSITIONS[(self.phase, _LookupInput.STOPPED)]

    # -- outputs -------------------------------------------------------------------------------

    @property
    def finished(self) -> bool:
        return self.phase is LookupPhase.FINISHED

    def result(self) -> list[PeerId]:
        """Up to k peers that answered, nearest to the target first."""
        return self.peers(PeerState.QUERIED)[: self.k]

    def peers(self, state: PeerState) -> list[PeerId]:
        """Every peer in `state`, nearest first (e.g. WAITING ones, to cancel their requests)."""
        found = [(c.distance, p) for p, c in self._peers.items() if c.state is state]
        return [p for _, p in sorted(found)]

    def state_of(self, peer: PeerId) -> PeerState | None:
        candidate = self._peers.get(peer)
        return None if candidate is None else candidate.state

    # -- internals -----------------------------------------------------------------------------

    def _hear(self, peer: PeerId, key: Key, *, hop: int) -> None:
        distance = key.value ^ self._target_value
        self._peers[peer] = _Candidate(distance, PeerState.HEARD, hop)
        bisect.insort(self._live, (distance, peer))

    def _move(self, peer: PeerId, event: _PeerInput) -> _Candidate:
        candidate = self._peers.get(peer)
        if candidate is None:
            raise LocalProtocolError(f"lookup: {peer} was never part of this lookup")
        new_state = _PEER_TRANSITIONS.get((candidate.state, event))
        if new_state is None:
            raise LocalProtocolError(
                f"lookup: {peer} cannot be {event.value} while {candidate.state.value}"
            )
        held = candidate.state is PeerState.WAITING and not candidate.stalled
        self._waiting += (new_state is PeerState.WAITING) - held
        candidate.state = new_state
        return candidate

    def _advance(self) -> None:
        """Move the phase on after a state change; phases never go back."""
        if self.phase is LookupPhase.FINISHED:
            return
        top = self._live[: self.k]
        if all(self._peers[p].state is PeerState.QUERIED for _, p in top):
            self.phase = _PHASE_TRANSITIONS[(self.phase, _LookupInput.COMPLETED)]
        elif self.phase is LookupPhase.SEARCHING and all(
            self._peers[p].state is PeerState.QUERIED for _, p in top[: self.beta]
        ):
            self.phase = _PHASE_TRANSITIONS[(self.phase, _LookupInput.CONVERGED)]
