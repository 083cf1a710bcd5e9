"""The routing table's snapshot, so a restarted node reconnects to its peers."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import delete, select
from sqlalchemy.dialects.sqlite import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from shardroute.identity.peer_id import PeerId
from shardroute.kad.repositories import SavedPeer
from shardroute.store.codec import pack_addrs, unpack_addrs
from shardroute.store.repository import Repository, atomic
from shardroute.store.schema import routing_peers


class SqliteRoutingTableStore(Repository):
    name = "routing"

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    @atomic
    async def save(self, peers: Sequence[SavedPeer]) -> None:
        """Replace the saved table with `peers` in one transaction."""
        async with self.engine.begin() as conn:
            await conn.execute(delete(routing_peers))
            if peers:
                await conn.execute(
                    insert(routing_peers),
                    [
                        {
                            "peer": p.peer.raw,
                            "addrs": pack_addrs(p.addrs),
                            "last_seen": p.last_seen,
                            "last_useful": p.last_useful,
                        }
                        for p in peers
                    ],
                )

    @atomic
    async def load(self) -> list[SavedPeer]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(select(routing_peers).order_by(routing_peers.c.last_seen))
            return [
                SavedPeer(
                    PeerId.from_bytes(r.peer), unpack_addrs(r.addrs), r.last_seen, r.last_useful
                )
                for r in rows
            ]
