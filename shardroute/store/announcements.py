"""The shards this node announces, with when each is next due for (re)publishing."""

from __future__ import annotations

from collections.abc import Sequence

from shardroute.store.engine import Database
from shardroute.store.repository import Repository, atomic


class SqliteAnnouncementStore(Repository):
    name = "announcements"

    def __init__(self, db: Database) -> None:
        self.db = db

    @atomic
    async def add(self, entries: Sequence[tuple[bytes, int]], now: float) -> int:
        """Durably record (multihash, codec) pairs as announced and due `now`; one transaction."""
        if not entries:
            return 0
        async with self.db.transaction() as conn:
            await conn.executemany(
                "INSERT INTO announcements (key, codec, announced_at, next_publish_at, stored_on) "
                "VALUES (?, ?, ?, ?, 0) "
                "ON CONFLICT (key) DO UPDATE SET next_publish_at = excluded.next_publish_at",
                [(key, codec, now, now) for key, codec in entries],
            )
        return len(entries)

    @atomic
    async def remove(self, keys: Sequence[bytes]) -> int:
        async with self.db.transaction() as conn:
            cursor = await conn.executemany(
                "DELETE FROM announcements WHERE key = ?", [(k,) for k in dict.fromkeys(keys)]
            )
            return max(0, cursor.rowcount)

    @atomic
    async def due(self, now: float, limit: int) -> list[bytes]:
        async with self.db.reading() as conn:
            rows = await conn.execute_fetchall(
                "SELECT key FROM announcements WHERE next_publish_at <= ? "
                "ORDER BY next_publish_at LIMIT ?",
                (now, limit),
            )
        return [row[0] for row in rows]

    @atomic
    async def due_count(self, now: float) -> int:
        return int(
            await self._number("SELECT count(*) FROM announcements WHERE next_publish_at <= ?", now)
            or 0
        )

    @atomic
    async def next_due_at(self) -> float | None:
        value = await self._number("SELECT min(next_publish_at) FROM announcements")
        return None if value is None else float(value)

    @atomic
    async def reschedule(self, entries: Sequence[tuple[bytes, float, int]]) -> None:
        """(key, next publish time, peers that took the last round) for each shard; one
        transaction. Shards withdrawn meanwhile stay withdrawn (no row to update).

        Soft (no fsync): a schedule lost to a machine crash leaves its shards due, and they are
        published once more; the announcement itself was durable when it was acknowledged."""
        if not entries:
            return
        rows = [(next_at, stored_on, key) for key, next_at, stored_on in entries]
        await self.db.run(
            lambda conn: conn.executemany(
                "UPDATE announcements SET next_publish_at = ?, stored_on = ? WHERE key = ?", rows
            ),
            durable=False,
        )

    @atomic
    async def contains(self, key: bytes) -> bool:
        return await self._number("SELECT count(*) FROM announcements WHERE key = ?", key) == 1

    @atomic
    async def count(self) -> int:
        return int(await self._number("SELECT count(*) FROM announcements") or 0)

    async def _number(self, sql: str, *params: object) -> int | float | None:
        async with self.db.reading() as conn:
            rows = await conn.execute_fetchall(sql, params)
        return next(iter(rows))[0] if rows else None
