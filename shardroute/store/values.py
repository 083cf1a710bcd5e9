"""Value records (PUT_VALUE received, and our own)."""

from __future__ import annotations

from sqlalchemy import delete, select
from sqlalchemy.dialects.sqlite import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from shardroute.kad.repositories import StoredValue
from shardroute.store.repository import Repository, atomic
from shardroute.store.schema import value_records


class SqliteValueStore(Repository):
    name = "values"

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    @atomic
    async def get(self, key: bytes) -> StoredValue | None:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(select(value_records).where(value_records.c.key == key))
            ).first()
        return None if row is None else StoredValue(row.key, row.value, row.received_at)

    @atomic
    async def put(self, key: bytes, value: bytes, received_at: float) -> None:
        stmt = insert(value_records).values(key=key, value=value, received_at=received_at)
        stmt = stmt.on_conflict_do_update(
            index_elements=[value_records.c.key], set_={"value": value, "received_at": received_at}
        )
        async with self.engine.begin() as conn:
            await conn.execute(stmt)

    @atomic
    async def expire(self, older_than: float, batch: int) -> int:
        t = value_records
        async with self.engine.begin() as conn:
            keys = [
                r.key
                for r in await conn.execute(
                    select(t.c.key).where(t.c.received_at < older_than).limit(batch)
                )
            ]
            if keys:
                await conn.execute(delete(t).where(t.c.key.in_(keys)))
            return len(keys)
