"""The routing table's snapshot, so a restarted node reconnects to its peers."""

from __future__ import annotations

from collections.abc import Sequence

from shardroute.identity.peer_id import PeerId
from shardroute.kad.repositories import SavedPeer
from shardroute.store.codec import pack_addrs, unpack_addrs
from shardroute.store.engine import Database
from shardroute.store.repository import Repository, atomic


class SqliteRoutingTableStore(Repository):
    name = "routing"

    def __init__(self, db: Database) -> None:
        self.db = db

    @atomic
    async def save(self, peers: Sequence[SavedPeer]) -> None:
        """Replace the saved table with `peers` in one transaction."""
        async with self.db.transaction() as conn:
            await conn.execute("DELETE FROM routing_peers")
            await conn.executemany(
                "INSERT INTO routing_peers (peer, addrs, last_seen, last_useful) "
                "VALUES (?, ?, ?, ?)",
                [(p.peer.raw, pack_addrs(p.addrs), p.last_seen, p.last_useful) for p in peers],
            )

    @atomic
    async def load(self) -> list[SavedPeer]:
        async with self.db.reading() as conn:
            rows = await conn.execute_fetchall(
                "SELECT peer, addrs, last_seen, last_useful FROM routing_peers ORDER BY last_seen"
            )
        return [
            SavedPeer(PeerId.from_bytes(peer), unpack_addrs(addrs), last_seen, last_useful)
            for peer, addrs, last_seen, last_useful in rows
        ]
