"""Value records (PUT_VALUE received, and our own)."""

from __future__ import annotations

from shardroute.kad.repositories import StoredValue
from shardroute.store.engine import Database
from shardroute.store.repository import Repository, atomic


class SqliteValueStore(Repository):
    name = "values"

    def __init__(self, db: Database) -> None:
        self.db = db

    @atomic
    async def get(self, key: bytes) -> StoredValue | None:
        async with self.db.reading() as conn:
            rows = list(
                await conn.execute_fetchall(
                    "SELECT value, received_at FROM value_records WHERE key = ?", (key,)
                )
            )
        return StoredValue(key, rows[0][0], rows[0][1]) if rows else None

    @atomic
    async def put(self, key: bytes, value: bytes, received_at: float) -> None:
        async with self.db.transaction() as conn:
            await conn.execute(
                "INSERT INTO value_records (key, value, received_at) VALUES (?, ?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value, "
                "received_at = excluded.received_at",
                (key, value, received_at),
            )

    @atomic
    async def expire(self, older_than: float, batch: int) -> int:
        return await self.db.delete(
            "DELETE FROM value_records WHERE key IN "
            "(SELECT key FROM value_records WHERE received_at < ? LIMIT ?)",
            (older_than, batch),
        )
