"""Timeouts that say so, on real `serve` processes and the CLI over 127.0.0.1: a find, closest
or get whose DHT query runs out with nothing found is DEADLINE_EXCEEDED "DHT query timeout"
(the CLI exits 5 saying it), and `shardroute_query_timeouts_total` counts it; what a lookup
found before its query timeout is still answered; a lookup that ends normally with nothing
found stays OK with zero results; and `locate` says DEADLINE_EXCEEDED only when its deadline
passed, never for a short answer, in its status and in the gRPC metrics.

A peer that never answers is a real node stopped with SIGSTOP (`ServeProcess.paused`): its
connections stay open and every request to it waits until the asker gives up. One call per
pause, each under 10 s: a connection whose keep-alive ping goes unanswered that long is closed
(the asker's way of noticing a hung peer), and then its requests fail instead of waiting."""

from __future__ import annotations

import hashlib
import json
import subprocess
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from shardroute.api.client import Client
from shardroute.api.service import QUERY_TIMEOUT
from shardroute.content import ContentId
from shardroute.identity.keys import Ed25519PrivateKey
from shardroute.identity.peer_id import PeerId
from tests.support.serve import ServeProcess, free_port, serve

pytestmark = pytest.mark.network


def query_timeout(seconds: str) -> dict[str, str]:
    return {
        "SHARDROUTE_QUERY_TIMEOUT": seconds,
        "SHARDROUTE_REQUEST_TIMEOUT": seconds,
        "SHARDROUTE_LOG_LEVEL": "debug",  # the lookups' own lines say whether they timed out
    }


# The asking nodes end a lookup after this; every deadline below except locate's is longer.
ASKER = query_timeout("4")  # its peers answer within it (when not paused)
LONELY = query_timeout("2")  # its one peer never answers when asked
TIMEOUT_ERROR = f"{QUERY_TIMEOUT} (DEADLINE_EXCEEDED)"


def digest(i: int) -> bytes:
    return hashlib.sha256(f"query timeout shard {i}".encode()).digest()


def cid(i: int) -> ContentId:
    return ContentId.from_shard_hash(digest(i))


HELD = 1  # the shard holder provides (and hang holds its record)
NOBODY = 2  # a shard nobody provides


def some_peer_id() -> str:
    return str(PeerId.from_public_key(Ed25519PrivateKey.generate().public_key))


def pk_key() -> tuple[str, bytes]:
    """A /pk/ record key nobody holds: as the CLI takes it, and as the DHT keys it."""
    peer = PeerId.parse(some_peer_id())
    return f"/pk/{peer}", b"/pk/" + peer.raw


def metrics_of(node: ServeProcess) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    args = list(node.proc.args)  # type: ignore[arg-type]
    target = str(args[args.index("--metrics") + 1])
    with urllib.request.urlopen(f"http://{target}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    """A sample's value; a labelled series not yet created counts as 0."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def timed_out_lines(node: ServeProcess, op: str, key: bytes) -> int:
    """How many of the node's lookups `op` of `key` logged that the query timeout ended them."""
    return sum(
        1
        for line in node.log()[node.log_offset :].splitlines()
        if f" {op} {key.hex()}: " in line and "(timed out)" in line
    )


def json_error(result: subprocess.CompletedProcess[str]) -> dict[str, object]:
    error: dict[str, object] = json.loads(result.stderr.strip().splitlines()[-1])
    return error


@dataclass
class Net:
    asker: ServeProcess  # a DHT client asking holder and hang; query timeout 4 s
    holder: ServeProcess  # provides HELD
    hang: ServeProcess  # paused by the tests that need a peer that never answers
    lonely: ServeProcess  # its only peer is `mute`; query timeout 2 s
    mute: ServeProcess  # paused for every call to `lonely`


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    tmp = tmp_path_factory.mktemp("timeouts")
    with (
        serve(tmp / "holder") as holder,
        serve(tmp / "hang") as hang,
        serve(tmp / "mute") as mute,
        # client mode: nobody sends it records, so what its lookups find came from the network
        serve(tmp / "asker", "--mode", "client", metrics_port=free_port(), env=ASKER) as asker,
        serve(tmp / "lonely", metrics_port=free_port(), env=LONELY) as lonely,
    ):
        for node, peer in ((holder, hang), (asker, holder), (asker, hang), (lonely, mute)):
            joined = node.cli("connect", peer.addrs[0])
            assert joined.returncode == 0, joined.stderr
            assert json.loads(joined.stdout)["dht_server"]
        # published (a node records itself as a provider when it publishes): holder and hang
        # can both name holder
        announced = holder.cli("announce", digest(HELD).hex(), "--wait")
        assert announced.returncode == 0, announced.stderr
        assert json.loads(announced.stdout) == {"announced": 1, "stored_on": 1}
        yield Net(asker, holder, hang, lonely, mute)


# -- a query that ends normally ----------------------------------------------------------------


def test_a_query_that_ends_with_nothing_found_is_ok_with_zero_results(net: Net) -> None:
    before = metrics_of(net.asker)
    timed_out_before = timed_out_lines(net.asker, "get_providers", cid(NOBODY).dht_key)
    with Client(f"127.0.0.1:{net.asker.grpc_port}", timeout=30) as client:
        # every peer answered: the lookups ended, not the query timeout; no error status
        assert client.find_providers(str(cid(NOBODY)), count=1, timeout=30) == []
        assert client.get_value(pk_key()[1]) is None
    found = net.asker.cli("find", digest(NOBODY).hex())
    assert found.returncode == 4 and json.loads(found.stdout) == [], found.stderr
    after = metrics_of(net.asker)
    for op in ("get_providers", "get_value"):
        assert value(after, "shardroute_query_timeouts_total", operation=op) == value(
            before, "shardroute_query_timeouts_total", operation=op
        )
    lookups = "shardroute_lookups_total"
    assert value(after, lookups, operation="get_providers", outcome="not_found") == (
        value(before, lookups, operation="get_providers", outcome="not_found") + 2
    )
    timed_out = timed_out_lines(net.asker, "get_providers", cid(NOBODY).dht_key)
    assert timed_out == timed_out_before


# -- a query the timeout ends with nothing found -----------------------------------------------


@pytest.mark.parametrize(
    ("command", "operation", "method"),
    [
        ("find", "get_providers", "FindProviders"),
        ("closest", "find_node", "GetClosestPeers"),
        ("get", "get_value", "GetValue"),
    ],
)
def test_a_query_the_timeout_ends_with_nothing_found_says_dht_query_timeout(
    net: Net, command: str, operation: str, method: str
) -> None:
    node = net.lonely  # its only peer never answers: nothing can be found
    key_text, key = pk_key()
    arg = {"find": digest(NOBODY).hex(), "closest": some_peer_id(), "get": key_text}[command]
    before = metrics_of(node)

    with net.mute.paused():
        as_json = node.cli(command, arg)
    assert as_json.returncode == 5, as_json.stderr
    assert as_json.stdout == ""
    assert json_error(as_json) == {
        "command": command,
        "error": TIMEOUT_ERROR,
        "exit": 5,
        "reason": "TIMEOUT",
    }
    with net.mute.paused():
        for_people = node.cli(command, arg, json=False)
    assert for_people.returncode == 5, for_people.stderr
    assert for_people.stderr.strip().splitlines()[-1] == f"shardroute {command}: {TIMEOUT_ERROR}"

    with (
        Client(f"127.0.0.1:{node.grpc_port}", timeout=30) as client,
        net.mute.paused(),
        pytest.raises(grpc.RpcError) as info,
    ):
        if command == "find":
            client.find_providers(str(cid(NOBODY)), count=1, timeout=30)
        elif command == "closest":
            client.closest_peers(arg)
        else:
            client.get_value(key)
    assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert info.value.details() == QUERY_TIMEOUT

    after = metrics_of(node)
    timeouts = "shardroute_query_timeouts_total"
    assert value(after, timeouts, operation=operation) == (
        value(before, timeouts, operation=operation) + 3
    )
    answered = "shardroute_grpc_requests_total"
    assert value(after, answered, method=method, code="DEADLINE_EXCEEDED") == (
        value(before, answered, method=method, code="DEADLINE_EXCEEDED") + 3
    )


# -- what was found before the timeout -----------------------------------------------------------


def test_providers_and_peers_found_before_the_query_timeout_are_still_answered(net: Net) -> None:
    holder_id = net.holder.addrs[0].rsplit("/p2p/", 1)[1]
    assert json.loads(net.asker.cli("status").stdout)["stored_records"] == 0
    before = metrics_of(net.asker)
    finds_before = timed_out_lines(net.asker, "get_providers", cid(HELD).dht_key)
    closest_before = timed_out_lines(net.asker, "find_node", PeerId.parse(holder_id).raw)
    with Client(f"127.0.0.1:{net.asker.grpc_port}", timeout=30) as client, net.hang.paused():
        streamed = client.find_providers(str(cid(HELD)), count=5, timeout=30)
    with net.hang.paused():
        found = net.asker.cli("find", digest(HELD).hex(), "--count", "5")
    with net.hang.paused():
        closest = net.asker.cli("closest", holder_id)
    assert [p.peer_id for p in streamed] == [holder_id]
    assert found.returncode == 0, found.stderr
    assert [p["peer_id"] for p in json.loads(found.stdout)] == [holder_id]
    assert closest.returncode == 0, closest.stderr
    assert holder_id in [p["peer_id"] for p in json.loads(closest.stdout)]
    # those lookups waited on the paused peer until the query timeout ended them...
    finds = timed_out_lines(net.asker, "get_providers", cid(HELD).dht_key)
    assert finds == finds_before + 2
    closest_lookups = timed_out_lines(net.asker, "find_node", PeerId.parse(holder_id).raw)
    assert closest_lookups == closest_before + 1
    # ...and found something, so none of them counts as a query timeout
    after = metrics_of(net.asker)
    for op in ("get_providers", "find_node"):
        assert value(after, "shardroute_query_timeouts_total", operation=op) == value(
            before, "shardroute_query_timeouts_total", operation=op
        )


# -- locate: short is not a timeout, a deadline that passed is ------------------------------


def test_a_short_locate_before_its_deadline_is_not_found_and_not_counted_as_a_timeout(
    net: Net,
) -> None:
    before = metrics_of(net.asker)
    result = net.asker.cli(
        "locate", digest(HELD).hex(), digest(NOBODY).hex(), "--need", "2", "--timeout", "30"
    )
    assert result.returncode == 4, result.stderr
    error = json_error(result)
    assert error["reason"] == "NOT_FOUND"
    assert error["error"] == "only 1 of the 2 needed shards have a provider (NOT_FOUND)"
    after = metrics_of(net.asker)
    answered = "shardroute_grpc_requests_total"
    for code, more in (("NOT_FOUND", 1), ("DEADLINE_EXCEEDED", 0), ("OK", 0)):
        assert value(after, answered, method="Locate", code=code) == (
            value(before, answered, method="Locate", code=code) + more
        ), code
    latency = "shardroute_grpc_request_duration_seconds_count"
    assert value(after, latency, method="Locate") == value(before, latency, method="Locate") + 1
    for name, labels in (
        ("shardroute_query_timeouts_total", {"operation": "get_providers"}),
        ("shardroute_lookups_total", {"operation": "get_providers", "outcome": "timeout"}),
    ):
        assert value(after, name, **labels) == value(before, name, **labels), name


def test_a_locate_whose_deadline_passes_is_deadline_exceeded(net: Net) -> None:
    before = metrics_of(net.asker)
    with net.hang.paused():  # the lookups would wait on it for 4 s; the deadline is 3 s
        result = net.asker.cli(
            "locate", digest(HELD).hex(), digest(NOBODY).hex(), "--need", "2", "--timeout", "3"
        )
    assert result.returncode == 5, result.stderr
    error = json_error(result)
    assert error["reason"] == "TIMEOUT"
    assert error["error"] == (
        "only 1 of the 2 needed shards have a provider by the deadline (DEADLINE_EXCEEDED)"
    )
    after = metrics_of(net.asker)
    answered = "shardroute_grpc_requests_total"
    for code, more in (("DEADLINE_EXCEEDED", 1), ("NOT_FOUND", 0)):
        assert value(after, answered, method="Locate", code=code) == (
            value(before, answered, method="Locate", code=code) + more
        ), code
