"""The connections a host holds: every open one, and the one per peer that streams go on.

When both sides dial at once each ends up with two connections; both keep the one dialed by the
peer with the smaller ID, so the two ends agree without talking, and the other drains.
"""

from __future__ import annotations

from shardroute.identity.peer_id import PeerId
from shardroute.net.muxer import Direction, MuxedConnection
from shardroute.wakeup import Wakeup


def _preference(conn: MuxedConnection, self_id: PeerId) -> tuple[bytes, int]:
    dialer = self_id if conn.direction is Direction.OUTBOUND else conn.remote_peer
    return (dialer.raw, id(conn))


class ConnectionRegistry:
    def __init__(self, self_id: PeerId) -> None:
        self.self_id = self_id
        self._by_peer: dict[PeerId, MuxedConnection] = {}
        self._all: set[MuxedConnection] = set()
        self.adopted = Wakeup()  # fired whenever a connection is added

    def add(self, conn: MuxedConnection) -> MuxedConnection | None:
        """Register `conn`; returns the connection of the same peer that lost the tie-break
        (now draining, to be closed by the caller), if any."""
        self._all.add(conn)
        self.adopted.fire()
        peer = conn.remote_peer
        current = self._by_peer.get(peer)
        if current is None or current.closed:
            self._by_peer[peer] = conn
            return None
        if _preference(conn, self.self_id) < _preference(current, self.self_id):
            keep, drop = conn, current
        else:
            keep, drop = current, conn
        self._by_peer[peer] = keep
        drop.draining = True
        return drop

    def remove(self, conn: MuxedConnection) -> bool:
        """Forget a closed connection; True if its peer has no connection left."""
        self._all.discard(conn)
        peer = conn.remote_peer
        if self._by_peer.get(peer) is not conn:
            return False
        del self._by_peer[peer]
        replacement = next((c for c in self._all if c.remote_peer == peer and not c.closed), None)
        if replacement is None:
            return True
        self._by_peer[peer] = replacement
        return False

    def get(self, peer: PeerId) -> MuxedConnection | None:
        conn = self._by_peer.get(peer)
        return conn if conn is not None and not conn.closed else None

    def usable(self, peer: PeerId) -> MuxedConnection | None:
        """The peer's connection if new streams can go on it."""
        conn = self.get(peer)
        return conn if conn is not None and not conn.draining else None

    async def wait_connected(self, peer: PeerId) -> MuxedConnection:
        """Wait until a connection to `peer` exists (e.g. one the peer is dialing)."""
        while (conn := self.get(peer)) is None:
            await self.adopted.wait()
        return conn

    def peers(self) -> list[PeerId]:
        return [p for p, c in self._by_peer.items() if not c.closed]

    def all(self) -> list[MuxedConnection]:
        """Every open connection, duplicates of one peer included."""
        return list(self._all)

    def of_peer(self, peer: PeerId) -> list[MuxedConnection]:
        return [c for c in self._all if c.remote_peer == peer]

    def __len__(self) -> int:
        return len(self._all)
