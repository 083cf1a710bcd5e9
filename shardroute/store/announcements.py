"""The shards this node announces, with when each is next due for (re)publishing."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import bindparam, delete, func, select
from sqlalchemy.dialects.sqlite import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from shardroute.store.repository import Repository, atomic
from shardroute.store.schema import announcements


class SqliteAnnouncementStore(Repository):
    name = "announcements"

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    @atomic
    async def add(self, entries: Sequence[tuple[bytes, int]], now: float) -> int:
        """Durably record (multihash, codec) pairs as announced and due `now`; one transaction."""
        if not entries:
            return 0
        stmt = insert(announcements)
        stmt = stmt.on_conflict_do_update(
            index_elements=[announcements.c.key],
            set_={"next_publish_at": stmt.excluded.next_publish_at},
        )
        async with self.engine.begin() as conn:
            await conn.execute(
                stmt,
                [
                    {
                        "key": k,
                        "codec": c,
                        "announced_at": now,
                        "next_publish_at": now,
                        "stored_on": 0,
                    }
                    for k, c in entries
                ],
            )
        return len(entries)

    @atomic
    async def remove(self, keys: Sequence[bytes]) -> int:
        async with self.engine.begin() as conn:
            result = await conn.execute(
                delete(announcements).where(announcements.c.key.in_(list(keys)))
            )
            return int(result.rowcount or 0)

    @atomic
    async def due(self, now: float, limit: int) -> list[bytes]:
        t = announcements
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(t.c.key)
                .where(t.c.next_publish_at <= now)
                .order_by(t.c.next_publish_at)
                .limit(limit)
            )
            return [r.key for r in rows]

    @atomic
    async def due_count(self, now: float) -> int:
        t = announcements
        async with self.engine.connect() as conn:
            return int(
                await conn.scalar(
                    select(func.count()).select_from(t).where(t.c.next_publish_at <= now)
                )
                or 0
            )

    @atomic
    async def next_due_at(self) -> float | None:
        async with self.engine.connect() as conn:
            value = await conn.scalar(select(func.min(announcements.c.next_publish_at)))
            return None if value is None else float(value)

    @atomic
    async def reschedule(self, entries: Sequence[tuple[bytes, float, int]]) -> None:
        """(key, next publish time, peers that took the last round) for each shard; one
        transaction. Shards withdrawn meanwhile stay withdrawn (no row to update)."""
        if not entries:
            return
        t = announcements
        stmt = (
            t.update()
            .where(t.c.key == bindparam("k"))
            .values(next_publish_at=bindparam("n"), stored_on=bindparam("s"))
        )
        async with self.engine.begin() as conn:
            await conn.execute(stmt, [{"k": k, "n": n, "s": s} for k, n, s in entries])

    @atomic
    async def contains(self, key: bytes) -> bool:
        async with self.engine.connect() as conn:
            return (
                await conn.execute(select(announcements.c.key).where(announcements.c.key == key))
            ).first() is not None

    @atomic
    async def count(self) -> int:
        async with self.engine.connect() as conn:
            return int(await conn.scalar(select(func.count()).select_from(announcements)) or 0)
