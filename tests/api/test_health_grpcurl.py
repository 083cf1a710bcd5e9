"""Health and reflection as a generic gRPC client sees them: grpcurl (built by
scripts/install-ops-tools.sh) against real `serve` processes, beside `shardroute health`."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.ops import tool
from tests.support.serve import ServeProcess, free_port, serve

pytestmark = pytest.mark.network


def grpcurl(node: ServeProcess, *verb: str, data: str | None = None) -> str:
    """grpcurl's output for `verb` (list, describe X, or a method with `data`); it must succeed."""
    flags = ["-plaintext", "-max-time", "10", *(["-d", data] if data is not None else [])]
    done = subprocess.run(
        [tool("grpcurl"), *flags, f"127.0.0.1:{node.grpc_port}", *verb],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def check(node: ServeProcess, service: str = "") -> str:
    """grpc.health.v1.Health/Check through grpcurl: the status name."""
    reply = grpcurl(node, "grpc.health.v1.Health/Check", data=json.dumps({"service": service}))
    return str(json.loads(reply)["status"])


def health(node: ServeProcess) -> tuple[int, str]:
    done = node.cli("health")
    return done.returncode, str(json.loads(done.stdout)["status"])


def test_grpcurl_sees_the_services_and_a_node_without_bootstrap_peers_serves_at_once(
    tmp_path: Path,
) -> None:
    with serve(tmp_path / "alone") as node:
        services = set(grpcurl(node, "list").split())
        assert {"shardroute.v1.ShardRoute", "grpc.health.v1.Health"} <= services
        described = grpcurl(node, "describe", "shardroute.v1.ShardRoute")
        assert "rpc FindProviders" in described and "rpc Announce" in described
        assert check(node) == "SERVING"
        assert check(node, "shardroute.v1.ShardRoute") == "SERVING"
        assert health(node) == (0, "SERVING")


def test_a_node_serves_once_it_joined_through_its_bootstrap_peer(tmp_path: Path) -> None:
    port = free_port()
    seed_listen = (f"/ip4/127.0.0.1/tcp/{port}",)
    with serve(tmp_path / "seed", listen=seed_listen) as seed:
        seed_addr = seed.addrs[0]  # its identity stays in its folder for the second start
    with serve(tmp_path / "joiner", "--bootstrap", seed_addr) as joiner:
        # the seed's port is closed: nothing to join through yet
        joiner.wait_log("no bootstrap peer reachable")
        assert check(joiner) == "NOT_SERVING"
        assert check(joiner, "shardroute.v1.ShardRoute") == "NOT_SERVING"
        assert health(joiner) == (1, "NOT_SERVING")
        with serve(tmp_path / "seed", listen=seed_listen) as again:
            assert again.addrs[0] == seed_addr
            deadline = time.monotonic() + 45  # bootstrap retries back off: 1, 2, 4, 8 s (±50%)
            while check(joiner) != "SERVING":
                assert time.monotonic() < deadline, joiner.log()
                time.sleep(0.3)
            assert check(joiner, "shardroute.v1.ShardRoute") == "SERVING"
            assert health(joiner) == (0, "SERVING")
