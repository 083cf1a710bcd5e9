"""What the DHT needs from the outside world: send a request to a peer and get the reply.

`shardroute.kad.streams.StreamTransport` implements it over libp2p streams and
`shardroute.kad.memory_transport` over direct calls, so the same DHT code runs in production,
in tests and in the many-node simulator.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from multiaddr import Multiaddr

from shardroute.identity.peer_id import PeerId
from shardroute.kad.messages import KadMessage, PeerInfo


class KadTransport(Protocol):
    """One node's view of the network, as the DHT uses it."""

    self_id: PeerId

    def self_addrs(self, to: PeerId | None = None) -> list[Multiaddr]:
        """Our current dialable addresses (what ADD_PROVIDER advertises); with `to`, only
        those that peer can use."""
        ...

    def peer_addrs(self, peer: PeerId) -> Sequence[Multiaddr]:
        """Addresses the transport itself knows for `peer` (a connection, identify)."""
        ...

    def shareable_to(self, peer: PeerId, addrs: Sequence[Multiaddr]) -> tuple[Multiaddr, ...]:
        """Of `addrs`, those `peer` can use (what we may hand it)."""
        ...

    def acceptable_from(self, peer: PeerId, addrs: Sequence[Multiaddr]) -> tuple[Multiaddr, ...]:
        """Of the addresses `peer` told us, those worth keeping and passing on."""
        ...

    def remote_addr(self, peer: PeerId) -> Multiaddr | None:
        """Where our connection to `peer` comes from, if we have one (IP diversity)."""
        ...

    # The timeout is a parameter (ASYNC109) so the driver can reset the stream it belongs to.
    async def request(self, peer: PeerInfo, message: KadMessage, *, timeout: float) -> KadMessage:  # noqa: ASYNC109
        """Send one request and return its reply (FIND_NODE, GET_*, PUT_VALUE, PING).

        Raises `KadRequestFailed` on a dial error, a reset, a timeout or an unusable reply.
        """
        ...

    async def send(self, peer: PeerInfo, messages: Sequence[KadMessage], *, timeout: float) -> None:  # noqa: ASYNC109
        """Write fire-and-forget messages (ADD_PROVIDER) on one stream; no reply is read.

        Raises `KadRequestFailed` when the messages could not be written.
        """
        ...
