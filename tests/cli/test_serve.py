"""`shardroute serve` and `shardroute ping` as real subprocesses on 127.0.0.1."""

from __future__ import annotations

import gc
import json
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from shardroute import limits
from shardroute.cli.serve import tune_collector
from shardroute.identity.keys import Ed25519PrivateKey
from shardroute.identity.peer_id import PeerId
from tests.support.peers import keyed_peer_id
from tests.support.serve import ENV, SHARDROUTE, serve

DUAL = ("/ip4/127.0.0.1/tcp/0", "/ip6/::1/tcp/0")


def test_serve_prints_full_addresses_keeps_its_identity_and_stops_on_signals(
    tmp_path: Path,
) -> None:
    with serve(tmp_path, listen=DUAL) as node:
        proc, lines = node.proc, node.addrs
        assert lines[0].startswith("/ip4/127.0.0.1/tcp/") and "/p2p/12D3KooW" in lines[0]
        assert lines[1].startswith("/ip6/::1/tcp/")
        port = int(lines[0].split("/")[4])
        assert port > 0
        peer = lines[0].rsplit("/", 1)[1]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    key_file = tmp_path / "identity.key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert (
        str(
            PeerId.from_public_key(
                Ed25519PrivateKey.from_protobuf(key_file.read_bytes()).public_key
            )
        )
        == peer
    )
    with serve(tmp_path, listen=DUAL) as node:
        proc, lines = node.proc, node.addrs
        assert lines[0].endswith(f"/p2p/{peer}")  # same identity after a restart
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=15) == 0


@pytest.mark.parametrize(
    ("env", "loop"), [({}, "uvloop"), ({"SHARDROUTE_EVENT_LOOP": "asyncio"}, "asyncio")]
)
def test_serve_runs_on_the_configured_event_loop_and_answers_on_it(
    tmp_path: Path, env: dict[str, str], loop: str
) -> None:
    with serve(tmp_path / "node", env=env) as node:
        assert node.wait_log("event loop:").endswith(f"event loop: {loop}")
        result = run_ping(node.addrs[0], "--count", "1", "--json")
        assert result.returncode == 0, result.stderr


def test_a_wrong_event_loop_stops_start_up_naming_the_setting(tmp_path: Path) -> None:
    result = subprocess.run(
        [*SHARDROUTE, "serve", "--data-dir", str(tmp_path / "node")],
        capture_output=True,
        text=True,
        env={**ENV, "SHARDROUTE_EVENT_LOOP": "trio"},
        timeout=60,
    )
    assert result.returncode != 0
    assert "event_loop (environment SHARDROUTE_EVENT_LOOP)" in result.stderr
    assert not (tmp_path / "node").exists()


def run_ping(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*SHARDROUTE, "ping", *args],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=60,
    )


def test_ping_reports_rtts_and_identify(tmp_path: Path) -> None:
    with serve(tmp_path, listen=DUAL) as node:
        lines = node.addrs
        result = run_ping(lines[0], "--count", "2", "--json")
        assert result.returncode == 0, result.stderr
        info = json.loads(result.stdout)
        assert info["peer_id"] == lines[0].rsplit("/", 1)[1]
        assert len(info["rtt_ms"]) == 2
        assert info["agent"].startswith("shardroute/")
        assert "/ipfs/ping/1.0.0" in info["protocols"]
        assert any(a.startswith("/ip4/127.0.0.1/tcp/") for a in info["listen_addrs"])
        human = run_ping(lines[1], "--count", "1")
        assert human.returncode == 0 and "ping 1:" in human.stdout and "agent:" in human.stdout


@pytest.mark.parametrize("wrong", ["peer", "port", "addr"])
def test_ping_fails_with_a_clear_error(tmp_path: Path, wrong: str) -> None:
    with serve(tmp_path) as node:
        transport, _, peer = node.addrs[0].rpartition("/p2p/")
        if wrong == "peer":
            other = keyed_peer_id()
            result = run_ping(f"{transport}/p2p/{other}")
            assert str(other) in result.stderr and peer in result.stderr
        elif wrong == "port":
            result = run_ping(f"/ip4/127.0.0.1/tcp/1/p2p/{peer}", "--timeout", "3")
            assert "dial" in result.stderr
        else:
            result = run_ping("/ip4/not-an-ip/tcp/1")
            assert "multiaddr" in result.stderr
        assert result.returncode != 0


def test_a_sigkilled_node_restarts_with_its_routing_table(tmp_path: Path) -> None:
    with serve(tmp_path / "a") as a:
        with serve(tmp_path / "b", "--bootstrap", a.addrs[0]) as b:
            b.wait_log("joined: 1 peers")  # the bootstrap reached A and put it in the table
            db = tmp_path / "b" / "shardroute.sqlite3"
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and not saved_peers(db):
                time.sleep(0.2)  # the node saves its table a moment after it changes
            assert len(saved_peers(db)) == 1
            b.kill()
        with serve(tmp_path / "b") as b:
            assert "reconnected to 1 of 1" in b.wait_log("saved routing-table peers")


def saved_peers(db: Path) -> list[tuple[bytes]]:
    if not db.exists():
        return []
    with sqlite3.connect(db) as conn:
        try:
            return conn.execute("select peer from routing_peers").fetchall()
        except sqlite3.OperationalError:
            return []


def db_upgrade(data_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*SHARDROUTE, "db", "upgrade", "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        env=ENV,
    )


LOOPBACK = (
    *("--grpc", "127.0.0.1:0", "--metrics", "127.0.0.1:0", "--routing-http", "127.0.0.1:0"),
    *("--listen", "/ip4/127.0.0.1/tcp/0"),
)


def test_db_upgrade_migrates_an_old_database_and_refuses_what_it_cannot_use(
    tmp_path: Path,
) -> None:
    from shardroute.store.engine import DATABASE_FILE, upgrade_database

    path = tmp_path / "node" / DATABASE_FILE
    upgrade_database(path, "0001")
    with sqlite3.connect(path) as db:
        db.execute("insert into value_records values (?, ?, ?)", (b"/pk/x", b"v", 1.0))
    result = db_upgrade(path.parent)
    assert result.returncode == 0, result.stderr
    assert "schema up to date" in result.stdout
    with sqlite3.connect(path) as db:
        assert db.execute("select version_num from alembic_version").fetchone() == ("0004",)
        assert db.execute("select value from value_records").fetchall() == [(b"v",)]
    assert db_upgrade(path.parent).returncode == 0  # again: nothing to do

    # A database a newer shardroute wrote: named, refused by db upgrade and by serve, untouched.
    with sqlite3.connect(path) as db:
        db.execute("update alembic_version set version_num = '0099'")
    before = path.read_bytes()
    result = db_upgrade(path.parent)
    assert result.returncode == 1
    assert "'0099'" in result.stderr and "newer version" in result.stderr
    assert "Traceback" not in result.stderr
    served = subprocess.run(
        [*SHARDROUTE, "serve", "--data-dir", str(path.parent), *LOOPBACK],
        capture_output=True,
        text=True,
        timeout=60,
        env=ENV,
    )
    assert served.returncode == 1 and "'0099'" in served.stderr
    assert path.read_bytes() == before

    # Not a database at all.
    junk = tmp_path / "junk" / DATABASE_FILE
    junk.parent.mkdir()
    junk.write_bytes(b"these are not the bytes of a SQLite file" * 100)
    result = db_upgrade(junk.parent)
    assert result.returncode == 1 and "not a database" in result.stderr
    assert "Traceback" not in result.stderr
    assert junk.read_bytes() == b"these are not the bytes of a SQLite file" * 100


def test_serve_help_names_its_exit_codes_and_serve_keeps_to_them(tmp_path: Path) -> None:
    def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*SHARDROUTE, "serve", *args],
            capture_output=True,
            text=True,
            timeout=60,
            env={**ENV, **env},
        )

    helped = run("--help")
    assert helped.returncode == 0
    assert "0 stopped by SIGINT or SIGTERM" in " ".join(helped.stdout.split())
    bad_flag = run("--no-such-flag")
    assert bad_flag.returncode == 2 and "--no-such-flag" in bad_flag.stderr
    bad_setting = run(
        "--data-dir", str(tmp_path), "--grpc", "127.0.0.1:0", SHARDROUTE_REPUBLISH_INTERVAL="abc"
    )
    assert bad_setting.returncode == 1
    assert bad_setting.stderr.count("\n") == 1 and "republish_interval" in bad_setting.stderr
    assert not any(tmp_path.iterdir())  # refused before anything was written


def test_a_node_process_collects_its_young_garbage_less_often_and_freezes_start_up() -> None:
    before = gc.get_threshold()
    try:
        tune_collector()
        assert gc.get_threshold() == (limits.GC_YOUNG_THRESHOLD, *before[1:])
        assert gc.get_freeze_count() > 0
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()
