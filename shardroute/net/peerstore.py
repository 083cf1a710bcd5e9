"""What we know about other peers: addresses with TTLs, protocols, public keys, agent."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field

from multiaddr import Multiaddr

from shardroute.identity.keys import PublicKey
from shardroute.identity.peer_id import PeerId

# Address TTLs (go-libp2p peerstore): addresses of a connected peer live while connected
# plus a grace; addresses learned second-hand (lookup answers) only for minutes.
CONNECTED_ADDR_TTL = 30 * 60.0
RECENTLY_CONNECTED_ADDR_TTL = 10 * 60.0
TEMP_ADDR_TTL = 2 * 60.0
PERMANENT_ADDR_TTL = float("inf")
MAX_ADDRS_PER_PEER = 32
MAX_PEERS = 10_000


@dataclass(slots=True)
class PeerData:
    addrs: dict[Multiaddr, float] = field(default_factory=dict)  # addr -> expiry (monotonic)
    # The live addresses as last read, valid until the first of them expires; every answer we
    # give reads the same table peers' addresses again.
    live: tuple[Multiaddr, ...] | None = None
    live_until: float = 0.0
    protocols: frozenset[str] = frozenset()
    public_key: PublicKey | None = None
    agent_version: str | None = None
    protocol_version: str | None = None
    observed_addr: Multiaddr | None = None


class Peerstore:
    """Bounded in memory: least recently touched peers go first when full."""

    def __init__(self, *, max_peers: int = MAX_PEERS) -> None:
        self._peers: OrderedDict[PeerId, PeerData] = OrderedDict()
        self._max_peers = max_peers

    def _entry(self, peer: PeerId) -> PeerData:
        data = self._peers.get(peer)
        if data is None:
            data = PeerData()
            self._peers[peer] = data
            while len(self._peers) > self._max_peers:
                self._peers.popitem(last=False)
        else:
            self._peers.move_to_end(peer)
        return data

    def add_addrs(self, peer: PeerId, addrs: Iterable[Multiaddr], ttl: float, now: float) -> None:
        data = self._entry(peer)
        expiry = now + ttl
        for addr in addrs:
            if data.addrs.get(addr, -1.0) < expiry:
                data.addrs[addr] = expiry
                data.live = None
        if len(data.addrs) > MAX_ADDRS_PER_PEER:
            keep = sorted(data.addrs.items(), key=lambda item: item[1], reverse=True)
            data.addrs = dict(keep[:MAX_ADDRS_PER_PEER])
            data.live = None

    def set_addrs_ttl(self, peer: PeerId, ttl: float, now: float) -> None:
        """Re-time every address of a peer (e.g. on disconnect, connected → recently connected)."""
        data = self._peers.get(peer)
        if data is not None:
            data.addrs = {addr: now + ttl for addr in data.addrs}
            data.live = None

    def addrs(self, peer: PeerId, now: float) -> tuple[Multiaddr, ...]:
        data = self._peers.get(peer)
        if data is None:
            return ()
        if data.live is not None and now < data.live_until:
            return data.live
        live = {addr: exp for addr, exp in data.addrs.items() if exp > now}
        if len(live) != len(data.addrs):
            data.addrs = live
        data.live = tuple(live)
        data.live_until = min(live.values(), default=float("inf"))
        return data.live

    def set_protocols(self, peer: PeerId, protocols: Iterable[str]) -> None:
        self._entry(peer).protocols = frozenset(protocols)

    def protocols(self, peer: PeerId) -> frozenset[str]:
        data = self._peers.get(peer)
        return data.protocols if data is not None else frozenset()

    def supports(self, peer: PeerId, protocol: str) -> bool:
        return protocol in self.protocols(peer)

    def set_public_key(self, peer: PeerId, key: PublicKey) -> None:
        self._entry(peer).public_key = key

    def public_key(self, peer: PeerId) -> PublicKey | None:
        data = self._peers.get(peer)
        if data is not None and data.public_key is not None:
            return data.public_key
        return peer.extract_public_key()

    def set_agent(self, peer: PeerId, agent: str | None, protocol_version: str | None) -> None:
        data = self._entry(peer)
        data.agent_version = agent
        data.protocol_version = protocol_version

    def get(self, peer: PeerId) -> PeerData | None:
        return self._peers.get(peer)

    def peers(self) -> list[PeerId]:
        return list(self._peers)

    def __len__(self) -> int:
        return len(self._peers)
