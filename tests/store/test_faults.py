"""A store that fails under a running node (real `serve` processes, a real size-limited tmpfs,
a real file system that the kernel turns read-only): a full disk and a read-only file system
leave the node answering finds, refuse announces with RESOURCE_EXHAUSTED or UNAVAILABLE naming
the cause, and accept them again once the disk heals; no acknowledged announcement is lost,
and SIGKILL during concurrent announces loses none that were acknowledged and never half a
batch."""

from __future__ import annotations

import errno
import hashlib
import json
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import grpc
import pytest

from shardroute.api.client import AsyncClient, Client
from shardroute.content import ContentId
from shardroute.store.database import SqliteStore
from shardroute.store.engine import DATABASE_FILE
from tests.support.nodes import address, loopback_app
from tests.support.serve import ServeProcess, serve
from tests.support.settings import LOOPBACK

MIB = 1024 * 1024


def digest(label: str) -> str:
    return hashlib.sha256(label.encode()).hexdigest()


def multihash(hex_digest: str) -> bytes:
    return b"\x12\x20" + bytes.fromhex(hex_digest)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs, unmounted afterwards (the tests run as root, as CI does)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


class FragileDisk:
    """An ext4 file system (no journal) on a loop device, mounted `errors=remount-ro`, that
    the kernel can be made to turn read-only under open files, as it does on a disk error.

    Why not a tmpfs remounted read-only: `mount -o remount,ro` refuses (EBUSY) while any file
    on it is open for writing, and a running node holds its database (and its lock file) open
    so. The kernel's own emergency read-only remount is the way a file system goes read-only
    under a running process; it cannot be undone in place (after `remount,rw` writes still
    fail with EROFS until the file system is unmounted), so the operator's repair is: stop
    the node, unmount, check, mount again."""

    def __init__(self, image: Path, mount: Path) -> None:
        self.image = image
        self.mount = mount
        self.device = ""

    def attach(self) -> None:
        self.device = subprocess.run(
            ["losetup", "--find", "--show", str(self.image)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        subprocess.run(
            ["mount", "-o", "errors=remount-ro", self.device, str(self.mount)], check=True
        )

    def detach(self) -> None:
        subprocess.run(["umount", str(self.mount)], check=False, capture_output=True)
        if self.device:
            subprocess.run(["losetup", "-d", self.device], check=False, capture_output=True)
            self.device = ""

    def go_read_only(self) -> None:
        """What a disk error does: ext4 remounts itself read-only, open files and all."""
        name = Path(self.device).name
        Path(f"/sys/fs/ext4/{name}/trigger_fs_error").write_text("shardroute test: disk error\n")

    def repair(self) -> None:
        """Unmount (nothing may hold a file open), check, mount read-write again."""
        subprocess.run(["umount", str(self.mount)], check=True)
        subprocess.run(["losetup", "-d", self.device], check=True)
        self.device = ""
        checked = subprocess.run(["e2fsck", "-fy", str(self.image)], capture_output=True, text=True)
        assert checked.returncode in (0, 1), checked.stdout + checked.stderr  # 1: fixed
        self.attach()


@pytest.fixture
def fragile_disk(tmp_path: Path) -> Iterator[FragileDisk]:
    image = tmp_path / "disk.img"
    with image.open("wb") as out:
        out.truncate(64 * MIB)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-O", "^has_journal", str(image)], check=True)
    mount = tmp_path / "disk"
    mount.mkdir()
    disk = FragileDisk(image, mount)
    try:
        disk.attach()
        (mount / "lost+found").rmdir()
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False, capture_output=True)
        disk.detach()


def fill(mount: Path) -> Path:
    """Take every free byte of `mount`; returns the filler to delete."""
    filler = mount / "filler"
    with filler.open("wb") as out:
        try:
            while True:
                out.write(b"\0" * 65536)
                out.flush()
        except OSError:
            pass
    return filler


def announced(data_dir: Path) -> set[bytes]:
    with sqlite3.connect(data_dir / DATABASE_FILE) as db:
        return {row[0] for row in db.execute("select key from announcements")}


def announce_until_refused(client: Client, label: str) -> tuple[set[str], grpc.RpcError]:
    """Announce batches of 200 until the node refuses one; the acknowledged hashes and the
    refusal (bounded: the disk is 4 MiB)."""
    acknowledged: set[str] = set()
    for batch in range(200):
        hashes = [digest(f"{label}-{batch}-{i}") for i in range(200)]
        try:
            client.announce([bytes.fromhex(h) for h in hashes])
        except grpc.RpcError as exc:
            return acknowledged, exc
        acknowledged.update(hashes)
    raise AssertionError("a full disk never refused an announce")


@contextmanager
def pair(data_dir: Path, other_dir: Path, shard: str) -> Iterator[tuple[ServeProcess, Client]]:
    """A node on `data_dir` and a peer that has published `shard` to it: what the node then
    holds for others, it must keep serving whatever its disk does."""
    with serve(data_dir) as node, serve(other_dir, "--bootstrap", node.addrs[0]) as other:
        with Client(f"127.0.0.1:{other.grpc_port}", timeout=60) as peer:
            assert peer.announce([bytes.fromhex(shard)], wait=True).stored_on
        with Client(f"127.0.0.1:{node.grpc_port}", timeout=30) as client:
            yield node, client


def test_a_full_disk_refuses_announces_serves_finds_and_heals(
    small_disk: Path, tmp_path: Path
) -> None:
    data_dir = small_disk / "node"
    first = digest("before the disk filled")
    theirs = digest("published by the peer")
    with pair(data_dir, tmp_path / "other", theirs) as (node, client):
        client.announce([bytes.fromhex(first)])
        filler = fill(small_disk)
        acknowledged, refusal = announce_until_refused(client, "full")
        assert refusal.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "disk is full" in (refusal.details() or "")
        # still serving: a find answers from the records it has, status still works
        found = node.cli("find", theirs)
        assert found.returncode == 0, found.stderr
        assert node.cli("status").returncode == 0
        # space returns: announces are taken again, without a restart
        filler.unlink()
        later = digest("after the disk healed")
        client.announce([bytes.fromhex(later)])
        assert node.proc.poll() is None
    kept = announced(data_dir)
    for h in {first, later, *acknowledged}:
        assert multihash(h) in kept


def test_a_database_another_process_locks_refuses_announces_and_heals(
    tmp_path: Path,
) -> None:
    """An operator's `sqlite3` holding the write lock (a backup, a repair): writes wait out
    the busy timeout and are refused as UNAVAILABLE; reads go on; released, writes work."""
    data_dir = tmp_path / "node"
    theirs = digest("the peer's, before the lock")
    with pair(data_dir, tmp_path / "other", theirs) as (node, client):
        locker = sqlite3.connect(data_dir / DATABASE_FILE, isolation_level=None)
        locker.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(grpc.RpcError) as refused:
                client.announce([bytes.fromhex(digest("while locked"))])
            assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
            assert "cannot be written" in (refused.value.details() or "")
            found = node.cli("find", theirs)
            assert found.returncode == 0, found.stderr
        finally:
            locker.execute("ROLLBACK")
            locker.close()
        later = digest("after the lock")
        client.announce([bytes.fromhex(later)])
        assert node.proc.poll() is None
    kept = announced(data_dir)
    assert multihash(later) in kept
    assert multihash(digest("while locked")) not in kept


@pytest.mark.anyio
async def test_a_read_only_database_refuses_writes_and_heals(tmp_path: Path) -> None:
    """SQLite's own read-only error (SQLITE_READONLY, as from a read-only file) on the node's
    write connection: announces are UNAVAILABLE, inbound records refused, finds answered; the
    node recovers when the database is writable again. (A file system cannot be remounted
    read-only under open files, EBUSY, so the error is raised by SQLite itself here.)"""
    store = await SqliteStore.open(tmp_path, max_providers_per_key=20)
    settings = replace(LOOPBACK, data_dir=str(tmp_path), grpc_listen="127.0.0.1:0")
    async with loopback_app(settings, storage=store) as app, loopback_app() as peer:
        await peer.node.connect(address(app))
        shard = ContentId.from_shard_hash(bytes.fromhex(digest("announced before")))
        await app.announce_and_wait([shard])
        await store.db.set_query_only(True)
        assert app.api is not None
        async with AsyncClient(f"127.0.0.1:{app.api.port}", timeout=10) as client:
            with pytest.raises(grpc.RpcError) as refused:
                await client.announce([bytes.fromhex(digest("while read-only"))])
            assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
            assert "cannot be written" in (refused.value.details() or "")
            # the peer still finds the shard through this node's records
            found = [p async for p in peer.find_providers(shard.dht_key, 1)]
            assert [p.peer_id for p in found] == [app.peer_id]
            await store.db.set_query_only(False)
            reply = await client.announce([bytes.fromhex(digest("after"))])
            assert reply.announced == 1


def test_a_file_system_gone_read_only_under_a_running_node(
    fragile_disk: FragileDisk, tmp_path: Path
) -> None:
    """The node's file system turns read-only while it runs: finds are still answered from
    the records it holds, announces are refused as UNAVAILABLE saying the file system is
    read-only, the node stays up; after the repair the restarted node has every acknowledged
    announcement, none of the refused ones, and takes announces again."""
    data_dir = fragile_disk.mount
    theirs = digest("published by the peer, before")
    with serve(data_dir) as node, serve(tmp_path / "other", "--bootstrap", node.addrs[0]) as other:
        with Client(f"127.0.0.1:{other.grpc_port}", timeout=60) as peer:
            assert peer.announce([bytes.fromhex(theirs)], wait=True).stored_on
            their_id = peer.node_info().peer_id
        with Client(f"127.0.0.1:{node.grpc_port}", timeout=30) as client:
            acknowledged = {digest(f"before-{i}") for i in range(300)}
            client.announce([bytes.fromhex(h) for h in sorted(acknowledged)])
            fragile_disk.go_read_only()
            with pytest.raises(OSError) as probe:
                (data_dir / "probe").write_bytes(b"x")
            assert probe.value.errno == errno.EROFS  # really read-only, for root too
            refused_hashes = [digest(f"while read-only-{i}") for i in range(3)]
            for refused_hash in refused_hashes:
                with pytest.raises(grpc.RpcError) as refused:
                    client.announce([bytes.fromhex(refused_hash)])
                assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
                assert "read-only" in (refused.value.details() or ""), refused.value.details()
            found = node.cli("find", theirs)
            assert found.returncode == 0, found.stderr
            assert their_id in [p["peer_id"] for p in json.loads(found.stdout)]
            assert node.cli("status").returncode == 0
            assert node.proc.poll() is None
        assert node.stop() == 0, node.log()[node.log_offset :]
    fragile_disk.repair()
    kept = announced(data_dir)
    assert {multihash(h) for h in acknowledged} <= kept
    assert not {multihash(h) for h in refused_hashes} & kept
    with serve(data_dir) as again, Client(f"127.0.0.1:{again.grpc_port}", timeout=30) as client:
        later = digest("after the repair")
        assert client.announce([bytes.fromhex(later)]).announced == 1
    assert multihash(later) in announced(data_dir)


def test_sigkill_during_concurrent_announces_loses_nothing_acknowledged(tmp_path: Path) -> None:
    data_dir = tmp_path / "node"
    acknowledged: list[list[str]] = []
    attempted: list[list[str]] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client_loop(port: int, worker: int) -> None:
        with Client(f"127.0.0.1:{port}", timeout=10) as client:
            for batch in range(10_000):
                if stop.is_set():
                    return
                hashes = [digest(f"w{worker}-b{batch}-{i}") for i in range(50)]
                with lock:
                    attempted.append(hashes)
                try:
                    client.announce([bytes.fromhex(h) for h in hashes])
                except grpc.RpcError:
                    return  # the node is gone
                with lock:
                    acknowledged.append(hashes)

    with serve(data_dir) as node:
        workers = [
            threading.Thread(target=client_loop, args=(node.grpc_port, w), daemon=True)
            for w in range(8)
        ]
        for worker in workers:
            worker.start()
        deadline = time.monotonic() + 30
        while len(acknowledged) < 40 and time.monotonic() < deadline:
            time.sleep(0.05)
        node.kill()
        stop.set()
        for worker in workers:
            worker.join(timeout=15)
    assert len(acknowledged) >= 40
    kept = announced(data_dir)  # sqlite recovers the WAL as the restarted node would
    for hashes in acknowledged:
        assert all(multihash(h) in kept for h in hashes)
    for hashes in attempted:
        present = sum(multihash(h) in kept for h in hashes)
        assert present in (0, len(hashes)), "half a batch survived"
    # and the node itself starts on that file and counts the same
    with serve(data_dir) as again:
        status = again.cli("status")
        assert status.returncode == 0
        assert f'"announced_records": {len(kept)}' in status.stdout
