"""Value records through the CLI and the API on real `serve` processes over 127.0.0.1: `put`
(from a file and from standard input) and `get` (raw bytes for people, hex under --json, no
value, a refused record, bad input), the `quorum` field of GetValue, the blocking client's
`quorum=`, the CLI's `--quorum` and the `value_quorum` setting.

How quorum shows: one node holds each record, and the askers also know a peer that never
answers (a node stopped with SIGSTOP, one call per pause and each under the 10 s after which
an unanswered keep-alive ping closes its connection). A get content with one answer ends when
the holder's comes; a get that wants more waits for the silent peer, past the caller's
deadline (the askers' query timeout is a minute), and ends DEADLINE_EXCEEDED."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from shardroute.api.client import Client
from shardroute.identity.keys import Ed25519PrivateKey
from shardroute.identity.peer_id import PeerId
from shardroute.kad.records import pk_record
from shardroute.pb.api.v1 import shardroute_pb2 as pb
from shardroute.pb.api.v1 import shardroute_pb2_grpc as pb_grpc
from tests.support.serve import ENV, SHARDROUTE, ServeProcess, serve

pytestmark = pytest.mark.network

# The deadline of a get expected to wait: the silent peer holds its lookup for 60 s.
HASTY = 4.0
PATIENT = 30.0


@dataclass(frozen=True)
class Record:
    text: str  # the key as the CLI takes it: /pk/<peer ID>
    key: bytes  # the key as the DHT has it: /pk/<peer ID bytes>
    value: bytes


def record() -> Record:
    """A fresh valid /pk/ record (its value is the public key that hashes to the peer ID)."""
    public = Ed25519PrivateKey.generate().public_key
    key, value = pk_record(public)
    return Record(f"/pk/{PeerId.from_public_key(public)}", key, value)


def run(
    node: ServeProcess, *args: str, input: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    """A client command with bytes in and out: record values are binary."""
    return subprocess.run(
        [*SHARDROUTE, *args, "--grpc", f"127.0.0.1:{node.grpc_port}"],
        capture_output=True,
        input=input,
        env=ENV,
        timeout=60,
    )


def json_error(result: subprocess.CompletedProcess[str]) -> dict[str, object]:
    assert "Traceback" not in result.stderr, result.stderr
    error: dict[str, object] = json.loads(result.stderr.strip().splitlines()[-1])
    return error


# -- put and get in the CLI ---------------------------------------------------------------------


def test_put_from_a_file_or_stdin_and_get_it_back_through_another_node(tmp_path: Path) -> None:
    with serve(tmp_path / "writer") as writer, serve(tmp_path / "reader") as reader:
        joined = writer.cli("connect", reader.addrs[0])
        assert joined.returncode == 0, joined.stderr
        from_file, from_stdin = record(), record()
        path = tmp_path / "value.bin"
        path.write_bytes(from_file.value)

        put = writer.cli("put", from_file.text, str(path))
        assert put.returncode == 0, put.stderr
        assert json.loads(put.stdout) == {"key": from_file.text, "stored_on": 1}
        piped = run(writer, "put", from_stdin.text, "-", input=from_stdin.value)
        assert piped.returncode == 0, piped.stderr
        assert piped.stdout == b"stored on 1 peers\n"

        # the reader was given both: the value's own bytes for people, hex under --json
        raw = run(reader, "get", from_file.text)
        assert raw.returncode == 0, raw.stderr
        assert raw.stdout == from_file.value
        got = reader.cli("get", from_stdin.text)
        assert got.returncode == 0, got.stderr
        assert json.loads(got.stdout) == {
            "key": from_stdin.text,
            "found": True,
            "value_hex": from_stdin.value.hex(),
        }
        # the CLI's key text is the key the API and the DHT use
        with Client(f"127.0.0.1:{reader.grpc_port}", timeout=PATIENT) as client:
            assert client.get_value(from_file.key) == from_file.value

        # a key nobody holds: exit 4, said both ways
        missing = record()
        none = reader.cli("get", missing.text)
        assert none.returncode == 4, none.stderr
        assert json.loads(none.stdout) == {"key": missing.text, "found": False}
        for_people = reader.cli("get", missing.text, json=False)
        assert for_people.returncode == 4
        assert for_people.stdout.strip() == f"no value found for {missing.text}"


def test_refused_records_and_bad_input_are_exit_2(tmp_path: Path) -> None:
    with serve(tmp_path / "n") as node:
        mine, other = record(), record()
        path = tmp_path / "other.bin"
        path.write_bytes(other.value)
        refused = node.cli("put", mine.text, str(path))  # a key that is not this key's
        assert refused.returncode == 2, refused.stderr
        error = json_error(refused)
        assert error["reason"] == "USAGE"
        assert str(error["error"]).startswith("record refused: ")
        for args in (
            ("put", mine.text, str(tmp_path / "no such file")),
            ("get", mine.text, "--quorum", "-1"),
            ("get", "/pk/not-a-peer-id"),
        ):
            bad = node.cli(*args)
            assert bad.returncode == 2, (args, bad.stderr)
            assert json_error(bad)["reason"] == "USAGE", args


# -- quorum -------------------------------------------------------------------------------------


@dataclass
class Quorum:
    holder: ServeProcess  # the one node holding each record
    silent: ServeProcess  # a peer of the askers, paused around each get
    default: ServeProcess  # value_quorum 0 (the default): a get runs its lookup to the end
    one: ServeProcess  # value_quorum 1: a get ends at the first valid answer
    records: Iterator[Record]  # each held by `holder` alone


@pytest.fixture(scope="module")
def quorum(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Quorum]:
    tmp = tmp_path_factory.mktemp("quorum")
    slow = {"SHARDROUTE_QUERY_TIMEOUT": "60", "SHARDROUTE_REQUEST_TIMEOUT": "60"}
    held = [record() for _ in range(8)]
    with serve(tmp / "holder") as holder:
        for r in held:  # before it has peers: it keeps the only copy
            put = run(holder, "put", r.text, "-", "--json", input=r.value)
            assert put.returncode == 0, put.stderr
            assert json.loads(put.stdout) == {"key": r.text, "stored_on": 0}
        with (
            serve(tmp / "silent") as silent,
            # DHT clients: nobody sends them records or asks them, so each get's answers
            # come from the holder and the silent peer alone
            serve(tmp / "default", "--mode", "client", env=slow) as default,
            serve(
                tmp / "one", "--mode", "client", env={**slow, "SHARDROUTE_VALUE_QUORUM": "1"}
            ) as one,
        ):
            for asker in (default, one):
                for peer in (holder, silent):
                    joined = asker.cli("connect", peer.addrs[0])
                    assert joined.returncode == 0, joined.stderr
            yield Quorum(holder, silent, default, one, iter(held))


def waits(q: Quorum, node: ServeProcess, key: bytes, quorum: int | None) -> None:
    """A get of `key` that must still be waiting for answers when its deadline passes."""
    with (
        Client(f"127.0.0.1:{node.grpc_port}", timeout=HASTY) as client,
        q.silent.paused(),
        pytest.raises(grpc.RpcError) as info,
    ):
        client.get_value(key, quorum=quorum)
    assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED


def test_the_value_quorum_setting_decides_whether_one_answer_ends_a_get(quorum: Quorum) -> None:
    r = next(quorum.records)
    waits(quorum, quorum.default, r.key, None)  # value_quorum 0: it waits for the silent peer
    first = next(quorum.records)
    with quorum.silent.paused():
        got = quorum.one.cli("get", first.text)  # value_quorum 1: the holder's answer ends it
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout)["value_hex"] == first.value.hex()


def test_the_blocking_clients_quorum_overrides_the_setting(quorum: Quorum) -> None:
    lower, higher = next(quorum.records), next(quorum.records)
    with (
        Client(f"127.0.0.1:{quorum.default.grpc_port}", timeout=PATIENT) as client,
        quorum.silent.paused(),
    ):
        assert client.get_value(lower.key, quorum=1) == lower.value
    waits(quorum, quorum.one, higher.key, 2)  # one holder cannot make a quorum of 2
    with (
        Client(f"127.0.0.1:{quorum.one.grpc_port}", timeout=PATIENT) as client,
        quorum.silent.paused(),
    ):
        assert client.get_value(higher.key, quorum=1) == higher.value


def test_the_quorum_field_of_get_value_on_the_wire(quorum: Quorum) -> None:
    def get(node: ServeProcess, key: bytes, n: int, deadline: float) -> pb.GetValueResponse:
        with (
            grpc.insecure_channel(f"127.0.0.1:{node.grpc_port}") as channel,
            quorum.silent.paused(),
        ):
            stub = pb_grpc.ShardRouteStub(channel)  # type: ignore[no-untyped-call]
            reply: pb.GetValueResponse = stub.GetValue(
                pb.GetValueRequest(key=key, quorum=n), timeout=deadline
            )
            return reply

    lower, higher = next(quorum.records), next(quorum.records)
    # 0 means the node's setting: to the end on `default`, the first answer on `one`
    with pytest.raises(grpc.RpcError) as info:
        get(quorum.default, lower.key, 0, HASTY)
    assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert get(quorum.default, lower.key, 1, PATIENT) == pb.GetValueResponse(
        found=True, value=lower.value
    )
    with pytest.raises(grpc.RpcError) as info:
        get(quorum.one, higher.key, 2, HASTY)
    assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert get(quorum.one, higher.key, 0, PATIENT) == pb.GetValueResponse(
        found=True, value=higher.value
    )


def test_the_clis_quorum_flag_reaches_the_node(quorum: Quorum) -> None:
    r = next(quorum.records)
    # on `default` a get without --quorum would wait past the CLI's deadline (shown above)
    with quorum.silent.paused():
        got = quorum.default.cli("get", r.text, "--quorum", "1")
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout) == {"key": r.text, "found": True, "value_hex": r.value.hex()}
