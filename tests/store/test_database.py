"""The SQLite store on real files: migrations, the repositories, expiry, restarts."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from multiaddr import Multiaddr

from shardroute.config import Settings
from shardroute.identity.keys import Ed25519PrivateKey
from shardroute.identity.peer_id import PeerId
from shardroute.kad.repositories import ProviderRecord, SavedPeer
from shardroute.store.database import SqliteStore
from shardroute.store.engine import (
    DATABASE_FILE,
    SCHEMA_REVISION,
    Database,
    alembic_config,
    schema_revision,
    upgrade_database,
    upgrade_in_child,
)

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).resolve().parents[2]
PER_KEY = Settings().max_providers_per_key
ADDRS = (Multiaddr("/ip4/127.0.0.1/tcp/4001"), Multiaddr("/ip6/::1/tcp/4002"))
KEY = bytes.fromhex("1220b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9")


def pid() -> PeerId:
    return PeerId.from_public_key(Ed25519PrivateKey.generate().public_key)


def tables(path: Path) -> set[str]:
    with sqlite3.connect(path) as db:
        return {
            r[0]
            for r in db.execute("select name from sqlite_master where type in ('table', 'index')")
        }


async def test_upgrade_from_0002_keeps_provider_records(tmp_path: Path) -> None:
    path = tmp_path / DATABASE_FILE
    upgrade_database(path, "0002")
    peer = pid()
    with sqlite3.connect(path) as db:
        db.execute(
            "insert into provider_records values (?, ?, ?, ?, ?, ?)",
            (KEY, peer.raw, b"\x08\x04\x7f\x00\x00\x01\x06\x0f\xa1", 1.0, 2e9, None),
        )
    store = await SqliteStore.open(
        tmp_path, max_providers_per_key=PER_KEY
    )  # migrates to head at open
    records = await store.providers.get_providers(KEY, now=100.0, limit=5)
    assert [(r.provider, r.addrs) for r in records] == [(peer, ADDRS[:1])]
    await store.close()


def test_migrations_from_empty_and_from_the_previous_revision(tmp_path: Path) -> None:
    fresh = tmp_path / "fresh.sqlite3"
    upgrade_database(fresh)
    assert {"provider_records", "announcements", "ix_provider_records_expires_at"} <= tables(fresh)
    old = tmp_path / "old.sqlite3"
    upgrade_database(old, "0001")
    assert "ix_provider_records_expires_at" not in tables(old)
    with sqlite3.connect(old) as db:  # data written under the previous revision survives
        db.execute("insert into value_records values (?, ?, ?)", (b"/pk/x", b"v", 1.0))
    upgrade_database(old)
    assert "ix_provider_records_expires_at" in tables(old)
    with sqlite3.connect(old) as db:
        assert db.execute("select value from value_records").fetchall() == [(b"v",)]
        assert db.execute("select version_num from alembic_version").fetchone() == ("0004",)


def test_the_schema_revision_a_node_checks_is_the_newest_migration(tmp_path: Path) -> None:
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    assert head == SCHEMA_REVISION
    path = tmp_path / DATABASE_FILE
    assert schema_revision(path) is None
    upgrade_in_child(path)
    assert schema_revision(path) == head
    path.with_name("garbage").write_bytes(b"not a database" * 100)
    assert schema_revision(path.with_name("garbage")) is None


def test_a_node_that_migrates_in_a_child_never_loads_the_migration_tools(tmp_path: Path) -> None:
    """What `serve` does: the schema is made in a child process, the node itself imports
    neither alembic nor SQLAlchemy (some 25 MiB it would hold for as long as it runs)."""
    script = f"""
import sys, anyio
from shardroute.app import App
from tests.support.settings import loopback
settings = loopback(data_dir={str(tmp_path / "node")!r})
async def main():
    async with App(settings, migrate_in_child=True):
        print(sorted(m for m in ("alembic", "sqlalchemy") if m in sys.modules))
anyio.run(main)
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"
    assert schema_revision(tmp_path / "node" / DATABASE_FILE) == SCHEMA_REVISION


async def test_provider_records_survive_a_restart_and_expire_in_batches(tmp_path: Path) -> None:
    store = await SqliteStore.open(tmp_path, max_providers_per_key=3)
    peers = [pid() for _ in range(5)]
    for i, peer in enumerate(peers):
        record = ProviderRecord(
            KEY, peer, ADDRS, received_at=100.0, expires_at=200.0 + i, addrs_expire_at=150.0
        )
        accepted = await store.providers.add_provider(record)
        assert accepted == (i < 3)  # the per-key cap
    # an update of a known provider is always taken
    assert await store.providers.add_provider(
        ProviderRecord(KEY, peers[0], ADDRS[:1], 120.0, 500.0)
    )
    await store.close()

    store = await SqliteStore.open(tmp_path, max_providers_per_key=PER_KEY)
    got = {r.provider: r for r in await store.providers.get_providers(KEY, now=140.0, limit=10)}
    assert set(got) == set(peers[:3])
    assert got[peers[0]].addrs == ADDRS[:1] and got[peers[1]].addrs == ADDRS
    later = {r.provider: r for r in await store.providers.get_providers(KEY, now=160.0, limit=10)}
    assert later[peers[1]].addrs == ()  # addresses past their own TTL
    assert await store.providers.expire(now=250.0, batch=1) == 1
    assert await store.providers.expire(now=250.0, batch=10) == 1
    assert await store.providers.count() == 1
    assert [r.provider for r in await store.providers.get_providers(KEY, now=250.0, limit=10)] == [
        peers[0]
    ]
    with sqlite3.connect(tmp_path / DATABASE_FILE) as db:
        assert db.execute("pragma journal_mode").fetchone() == ("wal",)
    await store.close()


async def test_the_cap_and_the_counts_ignore_expired_records_not_yet_swept(tmp_path: Path) -> None:
    store = await SqliteStore.open(tmp_path, max_providers_per_key=2)
    old = [pid() for _ in range(2)]
    for peer in old:
        assert await store.providers.add_provider(ProviderRecord(KEY, peer, ADDRS, 0.0, 100.0))
    newcomer = pid()
    assert not await store.providers.add_provider(ProviderRecord(KEY, newcomer, ADDRS, 50.0, 150.0))
    # once the first two have expired (not yet swept) a new provider takes a place
    assert await store.providers.add_provider(ProviderRecord(KEY, newcomer, ADDRS, 100.0, 200.0))
    assert await store.providers.count() == 3
    assert await store.providers.count(now=120.0) == 1
    await store.close()


async def test_values_routing_table_and_announcements(tmp_path: Path) -> None:
    store = await SqliteStore.open(tmp_path, max_providers_per_key=PER_KEY)
    await store.values.put(b"/pk/a", b"one", 10.0)
    await store.values.put(b"/pk/a", b"two", 20.0)
    stored = await store.values.get(b"/pk/a")
    assert stored is not None and (stored.value, stored.received_at) == (b"two", 20.0)
    assert await store.values.expire(older_than=30.0, batch=10) == 1
    saved = [SavedPeer(pid(), ADDRS, last_seen=float(i), last_useful=None) for i in range(4)]
    await store.routing.save(saved)
    await store.routing.save(saved[1:])
    assert await store.routing.load() == saved[1:]
    keys = [bytes([0x12, 0x20]) + bytes([i]) * 32 for i in range(5)]
    assert await store.announcements.add([(k, 0x55) for k in keys], now=1.0) == 5
    first = await store.announcements.due(now=1.0, limit=3)
    assert len(first) == 3 and set(first) <= set(keys)
    assert await store.announcements.due(now=0.5, limit=10) == []  # not due before they were added
    await store.announcements.reschedule([(k, 100.0, 20) for k in keys[:3]])
    assert set(await store.announcements.due(now=50.0, limit=10)) == set(keys[3:])
    assert await store.announcements.remove(keys[:1]) == 1
    assert (
        not await store.announcements.contains(keys[0]) and await store.announcements.count() == 4
    )
    await store.close()


async def test_due_count_follows_the_schedule(tmp_path: Path) -> None:
    store = await SqliteStore.open(tmp_path, max_providers_per_key=PER_KEY)
    keys = [bytes([0x12, 0x20]) + bytes([i]) * 32 for i in range(4)]
    await store.announcements.add([(k, 0x55) for k in keys], now=10.0)
    assert await store.announcements.due_count(10.0) == 4
    await store.announcements.reschedule([(k, 50.0 + i, 20) for i, k in enumerate(keys[:3])])
    assert await store.announcements.due_count(20.0) == 1
    assert await store.announcements.next_due_at() == 10.0
    await store.announcements.remove(keys[3:])
    assert await store.announcements.due(now=51.5, limit=10) == keys[:2]  # each its own time
    await store.announcements.reschedule([(keys[3], 1.0, 0)])  # withdrawn: stays withdrawn
    assert await store.announcements.count() == 3
    await store.close()


async def test_a_worker_transaction_is_all_or_nothing_and_the_worker_goes_on(
    tmp_path: Path,
) -> None:
    """`Database.run`: the whole function is one transaction on the worker thread; one that
    raises leaves nothing behind, and the next runs (soft or durable) on the same connection.
    What it commits is what the aiosqlite connections read."""
    path = tmp_path / DATABASE_FILE
    upgrade_database(path)
    db = await Database.open(path)

    def peers(conn: sqlite3.Connection) -> list[bytes]:
        return [row[0] for row in conn.execute("SELECT peer FROM provider_peers ORDER BY peer")]

    def synchronous(conn: sqlite3.Connection) -> int:
        return int(conn.execute("PRAGMA synchronous").fetchone()[0])

    def add_then_fail(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO provider_peers (peer) VALUES (?)", (b"first",))
        raise ValueError("refused halfway")

    def add(peer: bytes) -> Callable[[sqlite3.Connection], None]:
        def insert(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO provider_peers (peer) VALUES (?)", (peer,))

        return insert

    try:
        with pytest.raises(ValueError, match="halfway"):
            await db.run(add_then_fail, durable=False)
        assert await db.run(peers) == []
        await db.run(add(b"soft"), durable=False)
        # the mode each commit ran under: NORMAL (1, no fsync in WAL mode) or FULL (2)
        assert await db.run(synchronous, durable=False) == 1
        await db.run(add(b"durable"), durable=True)
        assert await db.run(synchronous, durable=True) == 2
        with pytest.raises(sqlite3.IntegrityError):  # peer is unique: the second insert fails
            await db.run(lambda conn: (add(b"again")(conn), add(b"again")(conn)))
        assert await db.run(peers) == [b"durable", b"soft"]
        async with db.reading() as conn:
            cursor = await conn.execute("SELECT count(*) FROM provider_peers")
            assert (await cursor.fetchone()) == (2,)
        await db.set_query_only(True)
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            await db.run(add(b"read-only"), durable=False)
        await db.set_query_only(False)
        await db.run(add(b"writable again"))
        assert len(await db.run(peers)) == 3
    finally:
        await db.close()
