"""What an operator tried, as an operator does it (real `serve` processes, real ports, real
pipes), and what happens now: one node per port and data folder, announce from a pipe, one
publication per announce, honest outcomes and exit codes, readable output and metrics."""

from __future__ import annotations

import hashlib
import json
import signal
import socket
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import base58
import grpc
import pytest

from shardroute.content import ContentId
from tests.support.serve import ENV, SHARDROUTE, ServeProcess, cli, free_port, serve

pytestmark = pytest.mark.network

LOOPBACK = ("--listen", "/ip4/127.0.0.1/tcp/0", "--routing-http", "127.0.0.1:0")


def digest(i: int) -> bytes:
    return hashlib.sha256(f"operator shard {i}".encode()).digest()


def run_serve(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """A `serve` that is expected to refuse to start."""
    return subprocess.run(
        [*SHARDROUTE, "serve", *args], capture_output=True, text=True, env=ENV, timeout=timeout
    )


def refusal(result: subprocess.CompletedProcess[str]) -> str:
    """The one line a refused start prints (after any log lines), checked for no traceback."""
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("shardroute serve:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServeProcess, ServeProcess]]:
    """Two connected nodes: most checks need a node with a peer."""
    tmp = tmp_path_factory.mktemp("pair")
    with serve(tmp / "a", metrics_port=free_port()) as a:  # noqa: SIM117 (b needs a)
        with serve(tmp / "b", "--bootstrap", a.addrs[0], metrics_port=free_port()) as b:
            assert b.cli("connect", a.addrs[0]).returncode == 0
            yield a, b


def scrape(node: ServeProcess) -> str:
    port = next(
        int(arg.rsplit(":", 1)[1])
        for arg in node.proc.args[node.proc.args.index("--metrics") + 1 :][:1]  # type: ignore[union-attr,operator]
    )
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        return str(reply.read().decode())


def sample(text: str, line_start: str) -> float:
    found = [line for line in text.splitlines() if line.startswith(line_start)]
    assert found, f"no series {line_start}"
    return float(found[0].rsplit(" ", 1)[1])


# -- one node per port and data folder ------------------------------------------------------


def test_a_second_node_on_a_held_grpc_port_refuses_and_never_shares_it(
    pair: tuple[ServeProcess, ServeProcess], tmp_path: Path
) -> None:
    a, _ = pair
    line = refusal(
        run_serve(*LOOPBACK, "--grpc", f"127.0.0.1:{a.grpc_port}", "--data-dir", str(tmp_path))
    )
    assert f"127.0.0.1:{a.grpc_port}" in line and f"pid {a.proc.pid}" in line
    ids = {json.loads(a.cli("id").stdout)["peer_id"] for _ in range(8)}
    assert len(ids) == 1  # every call answered by the one node


def test_ports_in_use_for_metrics_or_libp2p_are_one_line_each(
    pair: tuple[ServeProcess, ServeProcess], tmp_path: Path
) -> None:
    a, _ = pair
    metrics = a.proc.args[a.proc.args.index("--metrics") + 1]  # type: ignore[union-attr,operator]
    line = refusal(
        run_serve(
            *LOOPBACK,
            "--metrics",
            str(metrics),
            "--grpc",
            "127.0.0.1:0",
            "--data-dir",
            str(tmp_path / "m"),
        )
    )
    assert str(metrics) in line and "in use" in line
    listen = a.addrs[0].rsplit("/p2p/", 1)[0]
    line = refusal(
        run_serve(
            "--listen",
            listen,
            "--routing-http",
            "127.0.0.1:0",
            "--grpc",
            "127.0.0.1:0",
            "--metrics",
            "127.0.0.1:0",
            "--data-dir",
            str(tmp_path / "l"),
        )
    )
    assert listen in line and "in use" in line


def test_one_node_per_data_folder_and_a_killed_one_leaves_no_stale_lock(tmp_path: Path) -> None:
    with serve(tmp_path / "n") as first:
        line = refusal(
            run_serve(
                *LOOPBACK,
                "--grpc",
                "127.0.0.1:0",
                "--metrics",
                "127.0.0.1:0",
                "--data-dir",
                str(tmp_path / "n"),
            )
        )
        assert str(tmp_path / "n") in line and f"pid {first.proc.pid}" in line
        first.kill()
    with serve(tmp_path / "n") as again:  # the kernel dropped the lock with the process
        assert again.cli("id").returncode == 0


def test_a_data_folder_that_cannot_be_made_is_one_line(tmp_path: Path) -> None:
    """A --data-dir that names a file (or a folder inside one) is refused, naming it."""
    taken = tmp_path / "a-file"
    taken.write_text("not a folder")
    for data_dir in (taken, taken / "inside"):
        args = ("--grpc", "127.0.0.1:0", "--metrics", "127.0.0.1:0", "--data-dir", str(data_dir))
        line = refusal(run_serve(*LOOPBACK, *args))
        assert str(data_dir) in line and "cannot be written" in line
    assert taken.read_text() == "not a folder"


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("--listen", "/ip4/0.0.0.0/udp/4001/quic-v1"), "QUIC is not supported"),
        (("--bootstrap", "/ip4/127.0.0.1/tcp/4001"), "/p2p/<peer ID>"),
        (("--grpc", "127.0.0.1"), "HOST:PORT"),
        (("--metrics", "localhost:x"), "HOST:PORT"),
    ],
)
def test_bad_address_settings_are_refused_at_start_naming_the_setting(
    tmp_path: Path, args: tuple[str, str], words: str
) -> None:
    line = refusal(run_serve(*args, "--data-dir", str(tmp_path)))
    setting = args[0].removeprefix("--").replace("grpc", "grpc_listen")
    assert line.startswith(f"shardroute serve: {setting} ") and words in line
    assert not (tmp_path / "shardroute.sqlite3").exists()  # nothing started


def test_the_server_bind_and_the_client_target_are_separate_settings(tmp_path: Path) -> None:
    """Found as: one SHARDROUTE_GRPC was both where serve bound and where clients looked. Now
    serve binds SHARDROUTE_GRPC_LISTEN (no --grpc flag here to hide which setting it read)
    and client commands follow SHARDROUTE_GRPC, even with both set in one environment."""
    listen, elsewhere = free_port(), free_port()
    env = {
        "SHARDROUTE_GRPC_LISTEN": f"127.0.0.1:{listen}",
        "SHARDROUTE_GRPC": f"127.0.0.1:{elsewhere}",
    }
    with serve(tmp_path / "n", grpc_port=listen, grpc_flag=False, env=env) as node:
        assert "--grpc" not in node.proc.args  # type: ignore[operator]
        # the server bound the LISTEN address, and nothing at SHARDROUTE_GRPC's
        reached = cli(None, "id", env={"SHARDROUTE_GRPC": f"127.0.0.1:{listen}"})
        assert reached.returncode == 0, reached.stderr
        assert json.loads(reached.stdout)["peer_id"] == node.addrs[0].rsplit("/p2p/", 1)[1]
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", elsewhere), timeout=5).close()
        # a client with the server's environment looks where SHARDROUTE_GRPC says
        missed = cli(None, "id", env=env)
        assert missed.returncode == 3, missed.stderr
        assert f"127.0.0.1:{elsewhere}" in json.loads(missed.stderr)["error"]


# -- announce --------------------------------------------------------------------------------


def test_announce_reads_a_pipe_once_and_stdin_as_dash(
    pair: tuple[ServeProcess, ServeProcess],
) -> None:
    a, _ = pair
    before = json.loads(a.cli("status").stdout)["announced_records"]
    lines = "\n".join(digest(i).hex() for i in range(100, 150)) + "\n"
    for name in ("/dev/stdin", "-"):
        result = cli(a.grpc_port, "announce", "--file", name, input=lines)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout) == {"announced": 50}
    # equal shards in three forms are one shard: the count did not grow on the second pass
    assert json.loads(a.cli("status").stdout)["announced_records"] == before + 50


def test_equal_shards_in_different_forms_count_once(
    pair: tuple[ServeProcess, ServeProcess],
) -> None:
    a, _ = pair
    raw = digest(300)
    forms = [
        raw.hex(),
        str(ContentId.from_shard_hash(raw)),
        base58.b58encode(b"\x12\x20" + raw).decode(),
    ]
    result = a.cli("announce", *forms)
    assert json.loads(result.stdout) == {"announced": 1}


def test_announce_wait_publishes_each_shard_once(pair: tuple[ServeProcess, ServeProcess]) -> None:
    a, b = pair
    received = 'shardroute_dht_requests_received_total{result="ok",type="ADD_PROVIDER"}'
    published = 'shardroute_republished_shards_total{result="stored"}'
    b_before, a_before = sample(scrape(b), received), sample(scrape(a), published)
    result = a.cli("announce", digest(400).hex(), "--wait")
    assert json.loads(result.stdout) == {"announced": 1, "stored_on": 1}
    assert sample(scrape(b), received) == b_before + 1  # one ADD_PROVIDER reached the peer
    assert sample(scrape(a), published) == a_before + 1


def test_withdraw_removes_the_nodes_own_provider_record(
    pair: tuple[ServeProcess, ServeProcess],
) -> None:
    a, b = pair
    shard = digest(500).hex()
    own = json.loads(a.cli("id").stdout)["peer_id"]
    a.cli("announce", shard, "--wait")
    stored = json.loads(a.cli("status").stdout)["stored_records"]
    assert [p["peer_id"] for p in json.loads(a.cli("find", shard).stdout)] == [own]
    assert json.loads(a.cli("withdraw", shard).stdout) == {"withdrawn": 1}
    assert json.loads(a.cli("status").stdout)["stored_records"] == stored - 1  # its own record
    # b keeps the copy it was given until the TTL (no un-provide exists); a never names itself
    assert [p["peer_id"] for p in json.loads(b.cli("find", shard).stdout)] == [own]
    found = a.cli("find", shard, "--count", "5", "--timeout", "3")
    assert found.returncode == 4 and json.loads(found.stdout) == []


def test_a_node_answers_for_its_own_shards_before_any_peer_took_them(tmp_path: Path) -> None:
    """A node alone announces: it finds itself at once (as go stores its own record before it
    sends), with a dialable address, and withdraw takes that record away again."""
    with serve(tmp_path / "alone") as alone:
        shard = digest(510).hex()
        own = json.loads(alone.cli("id").stdout)
        assert json.loads(alone.cli("announce", shard).stdout)["announced"] == 1
        [found] = json.loads(alone.cli("find", shard).stdout)
        assert found["peer_id"] == own["peer_id"] and found["addrs"]
        assert json.loads(alone.cli("withdraw", shard).stdout) == {"withdrawn": 1}
        assert alone.cli("find", shard).returncode != 0


# -- honest outcomes and exit codes --------------------------------------------------------


def test_find_of_a_cid_nobody_has_says_so_and_counts_not_found(
    pair: tuple[ServeProcess, ServeProcess],
) -> None:
    a, _ = pair
    shard = digest(600).hex()
    lookups = 'shardroute_lookups_total{operation="get_providers",outcome="not_found"}'
    before = sample(scrape(a), lookups)
    human = cli(a.grpc_port, "find", shard, json=False)
    assert human.returncode == 4 and human.stdout.strip() == "no providers found"
    as_json = cli(a.grpc_port, "find", shard)
    assert as_json.returncode == 4 and json.loads(as_json.stdout) == []
    assert sample(scrape(a), lookups) == before + 2


def test_locate_short_of_shards_is_not_found_on_every_node_not_a_timeout(
    pair: tuple[ServeProcess, ServeProcess], tmp_path: Path
) -> None:
    a, _ = pair
    with serve(tmp_path / "alone") as alone:  # a node with no peers answers the same way
        for node in (a, alone):
            result = node.cli("locate", digest(700).hex(), "--need", "1")
            assert result.returncode == 4, result.stderr
            error = json.loads(result.stderr)
            assert error["reason"] == "NOT_FOUND" and "only 0 of the 1" in error["error"]


@pytest.mark.parametrize("command", ["announce", "find", "locate", "withdraw", "closest"])
@pytest.mark.parametrize("bad", ["bafybeig", "Qm123", "f1551220abc"])
def test_one_bad_cid_is_exit_2_with_a_readable_json_error_everywhere(
    pair: tuple[ServeProcess, ServeProcess], command: str, bad: str
) -> None:
    a, _ = pair
    extra = ["--need", "1"] if command == "locate" else []
    result = a.cli(command, bad, *extra)
    assert result.returncode == 2, result.stderr
    error = json.loads(result.stderr)
    assert error["exit"] == 2 and bad in error["error"]
    assert "padding" not in error["error"] and "version 113" not in error["error"]


def test_an_unreachable_node_and_a_target_without_port(tmp_path: Path) -> None:
    port = free_port()
    result = cli(port, "status", json=False)
    assert result.returncode == 3
    assert f"127.0.0.1:{port}" in result.stderr and "shardroute serve" in result.stderr
    assert "Traceback" not in result.stderr and "StatusCode" not in result.stderr
    result = subprocess.run(
        [*SHARDROUTE, "status", "--grpc", "127.0.0.1", "--json"],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=30,
    )
    assert result.returncode == 2 and "HOST:PORT" in json.loads(result.stderr)["error"]


def test_db_upgrade_refuses_a_folder_with_no_database(tmp_path: Path) -> None:
    typo = tmp_path / "shardroute-dta"
    result = subprocess.run(
        [*SHARDROUTE, "db", "upgrade", "--data-dir", str(typo)],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=60,
    )
    assert result.returncode == 2 and "holds no shardroute database" in result.stderr
    assert not typo.exists()
    created = subprocess.run(
        [*SHARDROUTE, "db", "upgrade", "--data-dir", str(typo), "--create"],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=60,
    )
    assert created.returncode == 0 and (typo / "shardroute.sqlite3").exists()


# -- output for people -----------------------------------------------------------------------


def test_status_id_and_peers_read_well(
    pair: tuple[ServeProcess, ServeProcess], tmp_path: Path
) -> None:
    a, b = pair
    status = cli(a.grpc_port, "status", json=False).stdout.splitlines()
    labels = [line.split(":")[0] for line in status if not line.startswith(" ")]
    assert "peer ID" in labels and "routing table" in labels and "[" not in "".join(status)
    colon = {line.index(":") for line in status if not line.startswith(" ")}
    values = {
        len(line) - len(line[line.index(":") + 1 :].lstrip())
        for line in status
        if not line.startswith(" ")
    }
    assert len(colon) >= 1 and len(values) == 1  # values start in one column
    ident = json.loads(b.cli("id").stdout)
    for addr in ident["addrs"]:
        assert addr.endswith(f"/p2p/{ident['peer_id']}")  # ready for --bootstrap
    peers = cli(b.grpc_port, "peers", json=False).stdout.splitlines()
    assert peers[0].split() == ["BUCKET", "PEER", "ID", "LAST", "SEEN", "ADDRESSES"]
    with serve(tmp_path / "alone") as alone:
        empty = cli(alone.grpc_port, "peers", json=False)
        assert empty.returncode == 0 and "the routing table is empty" in empty.stdout
    helped = subprocess.run(
        [*SHARDROUTE, "find", "--help"], capture_output=True, text=True, env=ENV
    )
    assert "(default 20)" in helped.stdout and "exit codes" in helped.stdout


# -- metrics and reflection ----------------------------------------------------------------


def test_metrics_are_initialised_named_and_timed_as_operators_expect(
    pair: tuple[ServeProcess, ServeProcess],
) -> None:
    a, _ = pair
    a.cli("status")
    text = scrape(a)
    assert "_created" not in text
    assert sample(text, "shardroute_build_info{") == 1
    assert sample(text, 'shardroute_bad_messages_total{reason="too_large"}') == 0
    assert sample(text, 'shardroute_grpc_request_duration_seconds_count{method="GetNodeInfo"}') >= 1
    helps = [line for line in text.splitlines() if line.startswith("# HELP shardroute_")]
    assert all(len(line.split(" ", 3)[3]) > 20 for line in helps)


def test_reflection_answers_in_v1_and_v1alpha(pair: tuple[ServeProcess, ServeProcess]) -> None:
    from grpc_reflection.v1alpha import reflection_pb2

    a, _ = pair
    with grpc.insecure_channel(f"127.0.0.1:{a.grpc_port}") as channel:
        for version in ("v1", "v1alpha"):
            call = channel.stream_stream(
                f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
                request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
            )
            request = reflection_pb2.ServerReflectionRequest(list_services="")
            (reply,) = list(call(iter([request]), timeout=10))
            names = {s.name for s in reply.list_services_response.service}
            assert {"shardroute.v1.ShardRoute", "grpc.health.v1.Health"} <= names, version


def test_serve_stops_cleanly_on_signals(tmp_path: Path) -> None:
    with serve(tmp_path / "n") as node:
        assert node.stop(signal.SIGINT) == 0
