"""The shipped Grafana dashboard against a real Prometheus scraping three real `serve` nodes:
after honest traffic (announce, finds found and missing, closest, put/get, a lookup the query
timeout ends, a garbage handshake), every panel query and the node picker's query return data,
as Grafana would send them."""

from __future__ import annotations

import hashlib
import json
import math
import re
import signal
import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from shardroute.api.client import Client
from shardroute.content import ContentId
from shardroute.identity.keys import Ed25519PrivateKey
from shardroute.identity.peer_id import PeerId
from tests.support.ops import Prometheus, prometheus
from tests.support.serve import ServeProcess, free_port, serve

pytestmark = [pytest.mark.network, pytest.mark.timeout(120)]

DASHBOARDS = Path(__file__).resolve().parents[2] / "deploy/grafana/dashboards"
SCRAPE_SECONDS = 1
# Grafana's $__interval for a 30-minute range on a ~1,800-pixel-wide panel, and its
# $__rate_interval: max($__interval + scrape interval, 4 * scrape interval).
INTERVAL_SECONDS = 1
RATE_INTERVAL_SECONDS = max(INTERVAL_SECONDS + SCRAPE_SECONDS, 4 * SCRAPE_SECONDS)
# Grafana's prometheusSpecialRegexEscape: what a multi-value variable's values get.
_REGEX_SPECIAL = re.compile(r"[$^*{}\[\]'+?.()|]")


def cid(i: int) -> str:
    return str(ContentId.from_shard_hash(hashlib.sha256(f"live shard {i}".encode()).digest()))


def panel_queries() -> list[tuple[str, str, str]]:
    """(dashboard file, panel title, expr) of every target of every shipped dashboard."""
    found = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        board = json.loads(path.read_text())
        panels = list(board["panels"])
        while panels:
            panel = panels.pop()
            panels.extend(panel.get("panels", []))  # rows hold panels too
            found += [(path.name, panel["title"], t["expr"]) for t in panel.get("targets", [])]
    return found


def variable_queries() -> list[str]:
    found = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        for var in json.loads(path.read_text())["templating"]["list"]:
            if var["type"] == "query":
                query = var["query"]
                found.append(query["query"] if isinstance(query, dict) else query)
    return found


def substitute(expr: str, instances: list[str] | None) -> str:
    """`expr` as Grafana sends it with `instances` picked in the node picker (None: All)."""
    if instances is None:
        value = ".*"  # the variable's allValue
    else:
        escaped = [_REGEX_SPECIAL.sub(lambda m: "\\\\" + m.group(0), i) for i in instances]
        value = escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"
    out = (
        expr.replace("$__rate_interval", f"{RATE_INTERVAL_SECONDS}s")
        .replace("$__interval", f"{INTERVAL_SECONDS}s")
        .replace("${instance}", value)
        .replace("$instance", value)
    )
    assert "$" not in out, f"a variable this test does not know: {expr}"
    return out


def series(server: Prometheus, expr: str) -> list[dict[str, Any]]:
    """The last 30 s of `expr` at Grafana's step, as a panel asks for it."""
    now = time.time()
    result: list[dict[str, Any]] = server.api(
        "query_range", query=expr, start=now - 30, end=now, step=INTERVAL_SECONDS
    )["result"]
    return result


def finite(result: list[dict[str, Any]]) -> bool:
    return any(math.isfinite(float(v)) for s in result for _, v in s["values"])


def label_values(server: Prometheus, query: str) -> set[str]:
    """Grafana's `label_values(metric, label)` through the series API, as it asks."""
    match = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", query.strip())
    assert match, f"a variable query this test does not know: {query}"
    metric, label = match.groups()
    values: list[str] = server.api(f"label/{label}/values", **{"match[]": metric})
    return set(values)


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[ServeProcess]]:
    """Three joined nodes; the third ends lookups after 1 s so its timeouts can be provoked."""
    tmp = tmp_path_factory.mktemp("live")
    fast = {"SHARDROUTE_QUERY_TIMEOUT": "1", "SHARDROUTE_REQUEST_TIMEOUT": "1"}
    with serve(  # noqa: SIM117 (b and c need a)
        tmp / "a", metrics_port=free_port(), routing_http_port=ROUTING_PORT
    ) as a:
        with serve(tmp / "b", "--bootstrap", a.addrs[0], metrics_port=free_port()) as b:
            with serve(
                tmp / "c", "--bootstrap", a.addrs[0], metrics_port=free_port(), env=fast
            ) as c:
                yield [a, b, c]


ROUTING_PORT = free_port()


def metrics_target(node: ServeProcess) -> str:
    args = list(node.proc.args)  # type: ignore[arg-type]
    return str(args[args.index("--metrics") + 1])


def test_every_panel_and_the_node_picker_return_data_after_honest_traffic(
    network: list[ServeProcess], tmp_path: Path
) -> None:
    a, b, c = network
    targets = [metrics_target(n) for n in network]
    with prometheus(tmp_path / "prometheus", targets) as prom:
        prom.wait('count(up{job="shardroute"} == 1) == 3')
        drive_traffic(a, b, c)
        # what the traffic moved has reached Prometheus (a scrape every second)
        prom.wait('shardroute_handshake_failures_total{reason!="timeout"} > 0')
        prom.wait('sum(shardroute_query_timeouts_total{operation="get_providers"}) > 0')
        prom.wait('shardroute_lookups_total{operation="get_providers",outcome="not_found"} > 0')
        prom.wait('shardroute_lookups_total{operation="get_value",outcome="found"} > 0')
        prom.wait("sum(shardroute_republished_shards_total) > 0")
        prom.wait("sum(shardroute_provider_records_published_total) > 0")

        for query in variable_queries():
            assert label_values(prom, query) == set(targets), query

        queries = panel_queries()
        assert len(queries) > 20
        empty: list[tuple[str, str, str]] = []
        no_numbers: list[tuple[str, str, str]] = []
        for board, title, expr in queries:
            everything = series(prom, substitute(expr, None))
            if not everything:
                empty.append((board, title, expr))
            elif not finite(everything):
                no_numbers.append((board, title, expr))
            # one node picked, and two: Grafana's regex forms of the variable
            for picked in ([targets[0]], targets[1:]):
                if not series(prom, substitute(expr, picked)):
                    empty.append((board, title, f"{expr} with {picked}"))
        assert not empty, f"panels without data: {empty}"
        assert not no_numbers, f"panels with only NaN: {no_numbers}"


def drive_traffic(a: ServeProcess, b: ServeProcess, c: ServeProcess) -> None:
    """Through the client library in this process: a CLI process per call costs seconds on a
    loaded machine, and the CLI's own paths are tested in tests/cli."""
    shards = [cid(i) for i in range(3)]
    with Client(f"127.0.0.1:{a.grpc_port}") as at_a, Client(f"127.0.0.1:{b.grpc_port}") as at_b:
        assert at_a.announce(shards, wait=True).stored_on
        assert at_b.find_providers(shards[0], count=1, timeout=10)
        assert at_b.find_providers(cid(100), count=1, timeout=10) == []  # nothing found
        assert at_a.closest_peers(c.addrs[0].rsplit("/", 1)[1])
        assert at_a.node_info().announced_records == len(shards)
        # A /pk/ record, put through one node and read through another (its key holds the
        # peer ID's binary bytes; the CLI takes it as /pk/<peer ID> text).
        key = Ed25519PrivateKey.generate().public_key
        record_key = b"/pk/" + PeerId.from_public_key(key).raw
        assert at_a.put_value(record_key, key.to_protobuf()) >= 1
        assert at_b.get_value(record_key) == key.to_protobuf()

    # The Delegated Routing HTTP API of a, asked as an IPFS tool would.
    url = f"http://127.0.0.1:{ROUTING_PORT}/routing/v1/providers/{shards[0]}"
    with urllib.request.urlopen(url, timeout=30) as answer:
        assert json.load(answer)["Providers"]

    # b stops answering: c's lookup waits on it until c's 1 s query timeout ends it.
    b.proc.send_signal(signal.SIGSTOP)
    try:
        with Client(f"127.0.0.1:{c.grpc_port}") as at_c:
            with pytest.raises(grpc.RpcError) as timed_out:
                at_c.find_providers(cid(200), count=1, timeout=10)
            assert timed_out.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    finally:
        b.proc.send_signal(signal.SIGCONT)

    # Not libp2p: the multistream handshake fails on a's listener.
    host, port = a.addrs[0].split("/")[2], int(a.addrs[0].split("/")[4])
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 4)
        sock.settimeout(10)
        while sock.recv(4096):  # until a closes it
            pass
