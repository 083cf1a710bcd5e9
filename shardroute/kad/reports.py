"""What DHT operations found and what they cost: the values the facade returns."""

from __future__ import annotations

from dataclasses import dataclass

from shardroute.kad.messages import PeerInfo


@dataclass(frozen=True, slots=True)
class LookupReport:
    """What one lookup found and what it cost.

    `rounds` is `Lookup.rounds`: the longest referral chain that led to a request (seeds are
    round 1). `duration` reads the injected clock's monotonic time.
    """

    peers: list[PeerInfo]  # the k closest peers that answered, nearest first
    requests: int
    rounds: int
    duration: float
    timed_out: bool
    unreachable: int = 0  # peers whose request failed or timed out


@dataclass(frozen=True, slots=True)
class ProvideReport:
    key: bytes
    peers: list[PeerInfo]  # the closest peers we sent ADD_PROVIDER to
    accepted: int  # sends that succeeded (ADD_PROVIDER has no answer: written = accepted)
    requests: int  # lookup requests plus sends
    rounds: int
    duration: float
    timed_out: bool  # the lookup hit the query timeout


@dataclass(frozen=True, slots=True)
class PutReport:
    key: bytes
    peers: list[PeerInfo]
    accepted: int  # PUT_VALUE answers that echoed our record
    requests: int
    rounds: int
    duration: float
    timed_out: bool


@dataclass(frozen=True, slots=True)
class ValueReport:
    key: bytes
    value: bytes | None  # the best valid value found
    responses: int  # valid values counted towards the quorum (a local one included)
    corrected: int  # peers (and ourselves) that were sent the best value in entry correction
    requests: int
    rounds: int
    duration: float
    timed_out: bool
