"""Helia's Delegated Routing V1 HTTP API client (npm @helia/delegated-routing-v1-http-api-client,
as libp2p and Helia use it) against `shardroute serve`: providers announced on one node and
peers, found through another node's HTTP endpoint."""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shardroute.content import DAG_PB_CODEC, ContentId
from tests.support.peers import keyed_peer_id
from tests.support.serve import ServeProcess, free_port, serve

CLIENT = Path(__file__).resolve().parent / "peers" / "routing-v1-client"


def helia(port: int, *args: str) -> list[dict[str, Any]]:
    """Run the client; its JSON lines up to the final {"done": ...}, which is checked."""
    if not (CLIENT / "node_modules" / "@helia" / "delegated-routing-v1-http-api-client").exists():
        raise RuntimeError(
            "Helia's routing client is not installed: run scripts/install-interop-peers.sh"
        )
    result = subprocess.run(
        ["node", str(CLIENT / "client.mjs"), f"http://127.0.0.1:{port}/", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert result.returncode == 0 and lines and "done" in lines[-1], (result.stdout, result.stderr)
    assert lines[-1]["count"] == len(lines) - 1
    return lines[:-1]


def transport(addr: str) -> str:
    return addr.rsplit("/p2p/", 1)[0]


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServeProcess, int]]:
    """A provider node and, joined through it, the node whose HTTP endpoint Helia asks."""
    tmp = tmp_path_factory.mktemp("helia")
    port = free_port()
    with serve(tmp / "provider") as provider:  # noqa: SIM117 (the second needs the first)
        with serve(tmp / "asked", "--bootstrap", provider.addrs[0], routing_http_port=port):
            yield provider, port


def shard(i: int) -> ContentId:
    return ContentId.from_shard_hash(hashlib.sha256(f"helia shard {i}".encode()).digest())


def test_helia_finds_the_providers_of_an_announced_shard(
    nodes: tuple[ServeProcess, int],
) -> None:
    provider, port = nodes
    announced = provider.cli("announce", str(shard(1)), "--wait")
    assert announced.returncode == 0, announced.stderr
    provider_id = provider.addrs[0].rsplit("/p2p/", 1)[1]

    for form in (shard(1), ContentId(0, DAG_PB_CODEC, shard(1).multihash)):
        (found,) = helia(port, "providers", str(form))
        assert found["id"] == provider_id
        assert found["addrs"] == [transport(a) for a in provider.addrs]

    # IPIP-484 filters go through the client to the server: IPv4-only providers drop out.
    assert helia(port, "providers", str(shard(1)), "!ip4") == []
    (kept,) = helia(port, "providers", str(shard(1)), "tcp")
    assert kept["id"] == provider_id

    # The records as written: the protocols the asked node learned by identify.
    (record,) = helia(port, "records", str(shard(1)))
    assert record["id"] == provider_id and "/icn/kad/1.0.0" in record["protocols"]

    assert helia(port, "providers", str(shard(2))) == []  # nobody announced it: no error


def test_helia_finds_a_peer_and_nothing_for_an_unknown_one(
    nodes: tuple[ServeProcess, int],
) -> None:
    provider, port = nodes
    provider_id = provider.addrs[0].rsplit("/p2p/", 1)[1]
    (peer,) = helia(port, "peers", provider_id)
    assert peer["id"] == provider_id
    assert peer["addrs"] == [transport(a) for a in provider.addrs]
    assert helia(port, "peers", str(keyed_peer_id(11))) == []
