"""Three `shardroute serve` processes, driven through the CLI over real gRPC."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import pytest

from shardroute.api.client import Client
from tests.support.serve import cli, free_port, serve

pytestmark = pytest.mark.network
# Short enough to watch republishing: records live 6 s and are republished every 2 s.
FAST = {
    "SHARDROUTE_PROVIDER_TTL": "6s",
    "SHARDROUTE_PROVIDER_ADDR_TTL": "6s",
    "SHARDROUTE_REPUBLISH_INTERVAL": "2s",
}
SHARD = "62eeef3124dc0747abdfe62c8614a2d726ca34fa8e47f27db5e0b40e7ecc0720"


def until(check: object, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.3)
    raise AssertionError("condition not met in time")


def status(port: int) -> dict[str, object]:
    result = cli(port, "status")
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


def peers(port: int) -> set[str]:
    return {p["peer_id"] for p in json.loads(cli(port, "peers").stdout)}


def test_announce_on_a_find_on_c_restart_b_after_sigkill_and_keep_republishing(
    tmp_path: Path,
) -> None:
    pa, pb, pc = free_port(), free_port(), free_port()
    with serve(tmp_path / "a", grpc_port=pa, env=FAST) as a:
        a_addr = a.addrs[0]
        with serve(tmp_path / "b", "--bootstrap", a_addr, grpc_port=pb, env=FAST) as b:
            with serve(tmp_path / "c", "--bootstrap", b.addrs[0], grpc_port=pc, env=FAST):
                until(lambda: len(peers(pc)) == 2 and len(peers(pa)) == 2)
                announced = cli(pa, "announce", SHARD, "--wait")
                assert announced.returncode == 0, announced.stderr
                assert json.loads(announced.stdout) == {"announced": 1, "stored_on": 2}
                found = cli(pc, "find", SHARD, "--count", "1")
                assert found.returncode == 0, found.stderr
                a_id = a_addr.rsplit("/", 1)[1]
                assert json.loads(found.stdout)[0]["peer_id"] == a_id

                b_table = peers(pb)
                until(lambda: status(pb)["stored_records"] == 1)
                time.sleep(1.5)  # the table is saved a moment after it changes
                b.kill()
            # C is gone too now; B restarts alone from its data folder
            with serve(tmp_path / "b", grpc_port=pb, env=FAST):
                until(lambda: a_id in peers(pb))
                assert peers(pb) <= b_table
                assert status(pb)["stored_records"] == 1

                # A restarts after a SIGKILL: its announcement is still there and republished
                a.kill()
                with serve(tmp_path / "a", "--bootstrap", b_addr_of(pb), grpc_port=pa, env=FAST):
                    assert status(pa)["announced_records"] == 1
                    time.sleep(7)  # past the 6 s TTL of every record made before the restart
                    found = cli(pb, "find", SHARD, "--count", "1", "--timeout", "5")
                    assert found.returncode == 0, found.stderr
                    assert json.loads(found.stdout)[0]["peer_id"] == a_id


def b_addr_of(port: int) -> str:
    info = json.loads(cli(port, "id").stdout)
    # `id` prints full /p2p/ addresses, ready for --bootstrap
    return next(a for a in info["addrs"] if a.startswith("/ip4/127.0.0.1/"))


def test_sigkill_during_an_announce_burst_loses_no_acknowledged_shard(tmp_path: Path) -> None:
    port = free_port()
    shards = [hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(10_000)]
    acknowledged: list[bytes] = []
    with serve(tmp_path / "n", grpc_port=port) as node:
        proc = node.proc
        killer = threading.Timer(0.0, lambda: None)
        with Client(f"127.0.0.1:{port}", timeout=10) as client:
            for start in range(0, len(shards), 100):
                batch = shards[start : start + 100]
                if start == 3000:  # kill while later batches are in flight
                    killer = threading.Timer(0.05, proc.kill)
                    killer.start()
                try:
                    client.announce(batch)
                except grpc.RpcError:
                    break
                acknowledged.extend(batch)
        killer.join()
        proc.wait()
    assert 3000 <= len(acknowledged) < len(shards)  # the kill landed mid-burst
    with serve(tmp_path / "n", grpc_port=port):
        assert status(port)["announced_records"] >= len(acknowledged)
    with sqlite3.connect(tmp_path / "n" / "shardroute.sqlite3") as db:
        stored = {row[0] for row in db.execute("select key from announcements")}
    assert all(b"\x12\x20" + digest in stored for digest in acknowledged)


def test_serve_exposes_prometheus_metrics(tmp_path: Path) -> None:
    metrics_port = free_port()
    with serve(tmp_path / "n", metrics_port=metrics_port) as node:
        grpc_port = node.grpc_port
        assert cli(grpc_port, "announce", SHARD).returncode == 0
        # a local read: the node alone answers for itself, from its own record
        assert cli(grpc_port, "find", SHARD, "--timeout", "2").returncode == 0
        with urllib.request.urlopen(
            f"http://127.0.0.1:{metrics_port}/metrics", timeout=10
        ) as reply:
            text = reply.read().decode()
        for name in (
            "shardroute_routing_table_peers",
            "shardroute_provider_records_announced",
            "shardroute_grpc_requests_total",
            "shardroute_connections",
        ):
            assert name in text, name
        assert 'shardroute_grpc_requests_total{code="OK",method="Announce"} 1.0' in text
        assert 'shardroute_grpc_requests_total{code="OK",method="FindProviders"} 1.0' in text
        # the durable write behind the acknowledgement, and the local read, are timed
        for operation in ("announcements.add", "providers.get_providers"):
            assert (
                f'shardroute_store_operation_seconds_count{{operation="{operation}"}} 1.0' in text
            ), operation
