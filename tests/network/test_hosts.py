"""shardroute across real hosts: five network-namespace hosts on one bridge, each running
`shardroute serve` on its defaults (port 4001, its own 127.0.0.1, its data in ./shardroute-data),
plus hosts behind a NAT, go and js peers, and a host that lies about its addresses.

The IP-diversity exemption for private addresses is off, as on a network where every host has
a private address: each host has a /16 of its own, so the limits see real groups.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families

from shardroute.content import ContentId
from tests.interop.thirdparty import start_peer
from tests.support.testbed import NetHost, Testbed, available

pytestmark = pytest.mark.network

ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "SHARDROUTE_DIVERSITY_EXEMPT_PRIVATE": "false"}
SHARDS = [f"{i:064x}" for i in range(1, 6)]


def cid_of(shard: str) -> str:
    return str(ContentId.from_shard_hash(bytes.fromhex(shard)))


def until(check: Any, seconds: float = 30, what: str = "condition") -> Any:
    """Poll `check` (the nodes are other processes) until it returns something true."""
    deadline = time.monotonic() + seconds
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {seconds} s")
        time.sleep(0.5)


@dataclass
class NetNode:
    host: NetHost
    workdir: Path
    addrs: list[str] = field(default_factory=list)
    grpc: str = "127.0.0.1:7070"  # on the host's own loopback

    @property
    def peer_id(self) -> str:
        return self.addrs[0].rsplit("/", 1)[1]

    @property
    def address(self) -> str:
        """The address other hosts dial: this host's own IP, port 4001."""
        return next(a for a in self.addrs if f"/ip4/{self.host.ip}/" in a)

    def cli_result(self, *args: str, timeout: float = 60) -> Any:
        return self.host.shardroute(*args, "--grpc", self.grpc, "--json", timeout=timeout)

    def cli(self, *args: str, timeout: float = 60) -> Any:
        result = self.cli_result(*args, timeout=timeout)
        assert result.returncode == 0, f"{self.host.name}: {args}: {result.stderr}"
        return json.loads(result.stdout)

    def table(self) -> set[str]:
        return {p["peer_id"] for p in self.cli("peers")}

    def log(self) -> str:
        return (self.workdir / "serve.log").read_text(errors="replace")

    def metric(self, name: str, labels: dict[str, str], port: int = 9464) -> float:
        """One sample of the node's metrics endpoint (on its host's 127.0.0.1); 0 if absent."""
        fetch = (
            "import sys, urllib.request; sys.stdout.write(urllib.request.urlopen("
            f"'http://127.0.0.1:{port}/metrics', timeout=10).read().decode())"
        )
        result = self.host.run(sys.executable, "-c", fetch)
        assert result.returncode == 0, f"{self.host.name}: metrics: {result.stderr}"
        for family in text_string_to_metric_families(result.stdout):
            for sample in family.samples:
                if sample.name == name and labels.items() <= sample.labels.items():
                    return float(sample.value)
        return 0.0


def serve(
    host: NetHost,
    workdir: Path,
    *extra: str,
    lines: int = 2,
    env_extra: dict[str, str] | None = None,
    grpc_port: int = 7070,
) -> NetNode:
    """`shardroute serve` with no flags but `extra`, in `workdir` (so its data lands in
    ./shardroute-data there); waits for its printed addresses and its gRPC API."""
    workdir.mkdir(parents=True, exist_ok=True)
    proc = host.start(
        [sys.executable, "-m", "shardroute", "serve", *extra],
        log=workdir / "serve.log",
        cwd=workdir,
        env={**ENV, **(env_extra or {})},
    )
    assert proc.stdout is not None
    node = NetNode(host, workdir)
    for _ in range(lines):
        line = proc.stdout.readline().strip()
        assert line, f"serve on {host.name} exited: {node.log()}"
        node.addrs.append(line)
    node.grpc = f"127.0.0.1:{grpc_port}"
    until(lambda: node.cli_result("id").returncode == 0, what=f"gRPC on {host.name}")
    return node


@dataclass
class Network:
    testbed: Testbed
    switch: str
    nodes: list[NetNode]
    tmp: Path


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    reason = available()
    if reason:
        pytest.fail(f"the multi-host tests need network namespaces: {reason}")
    tmp = tmp_path_factory.mktemp("hosts")
    with Testbed() as testbed:
        switch = testbed.switch("sw")
        hosts = [testbed.host(f"h{i}", switch) for i in range(5)]
        first = serve(hosts[0], tmp / "h0")
        nodes = [first] + [serve(h, tmp / h.name, "--bootstrap", first.address) for h in hosts[1:]]
        yield Network(testbed, switch, nodes, tmp)


def test_serve_prints_one_dialable_address_per_interface(network: Network) -> None:
    for node in network.nodes:
        assert all("/tcp/4001/p2p/" in a for a in node.addrs), node.addrs
        assert any(a.startswith(f"/ip4/{node.host.ip}/tcp/4001/p2p/") for a in node.addrs)
        assert any(a.startswith("/ip4/127.0.0.1/tcp/4001/p2p/") for a in node.addrs)
        assert not any("0.0.0.0" in a for a in node.addrs)


def test_every_table_holds_the_other_hosts_and_closest_lists_them(network: Network) -> None:
    everyone = {n.peer_id for n in network.nodes}
    for node in network.nodes:
        until(
            lambda n=node: everyone - {n.peer_id} <= n.table(),
            what=f"{node.host.name}'s table holds every other host",
        )
        rows = node.cli("peers")
        for row in rows:
            other = next(n for n in network.nodes if n.peer_id == row["peer_id"])
            assert f"/ip4/{other.host.ip}/tcp/4001" in row["addrs"], row
            assert not any("/ip4/127." in a for a in row["addrs"]), row
    for node in network.nodes:
        listed = {p["peer_id"] for p in node.cli("closest", node.peer_id)}
        assert everyone - {node.peer_id} <= listed


def provider_rows(finder: NetNode, shard: str) -> list[dict[str, Any]]:
    result = finder.cli_result("find", shard, "--count", "5")
    if result.returncode != 0:  # 4: none found yet
        return []
    return list(json.loads(result.stdout))


def test_a_shard_announced_on_one_host_is_found_and_dialable_from_every_other(
    network: Network,
) -> None:
    provider, *finders = network.nodes[1:] + network.nodes[:1]
    assert provider.cli("announce", SHARDS[0], "--wait")["stored_on"] >= 1
    for finder in finders:
        rows = until(lambda f=finder: provider_rows(f, SHARDS[0]), what="the provider is found")
        assert [r["peer_id"] for r in rows] == [provider.peer_id]
        addrs = rows[0]["addrs"]
        assert f"/ip4/{provider.host.ip}/tcp/4001" in addrs, addrs
        assert not any(a.startswith(("/ip4/127.", "/ip6/::1")) for a in addrs), addrs
        for addr in addrs:
            connected = finder.cli("connect", f"{addr}/p2p/{provider.peer_id}")
            assert connected["peer_id"] == provider.peer_id


def locate_rows(node: NetNode, shard: str) -> list[dict[str, Any]]:
    result = node.cli_result("locate", shard, "--need", "1")
    if result.returncode != 0:  # not found yet
        return []
    return list(json.loads(result.stdout))


def test_locate_from_every_host_gives_the_announcing_hosts_address_and_it_dials(
    network: Network,
) -> None:
    provider = network.nodes[2]
    assert provider.cli("announce", SHARDS[4], "--wait")["stored_on"] >= 1
    real = f"/ip4/{provider.host.ip}/tcp/4001"
    for node in network.nodes:
        rows = until(lambda n=node: locate_rows(n, SHARDS[4]), what=f"locate on {node.host.name}")
        assert [(r["index"], r["peer_id"]) for r in rows] == [(0, provider.peer_id)], rows
        addrs = rows[0]["addrs"]
        assert real in addrs, (node.host.name, addrs)
        if node is provider:
            continue  # its own record; nothing to dial
        assert not any(a.startswith(("/ip4/127.", "/ip6/::1")) for a in addrs), addrs
        for addr in addrs:
            connected = node.cli("connect", f"{addr}/p2p/{provider.peer_id}")
            assert connected["peer_id"] == provider.peer_id, (node.host.name, addr)


def test_a_host_behind_nat_with_append_announce_is_found_and_dialed(network: Network) -> None:
    behind = network.testbed.nat("nat1", network.switch)
    public = f"/ip4/{behind.public_ip}/tcp/4001"  # type: ignore[attr-defined]
    node = serve(
        behind,
        network.tmp / "nat1",
        "--bootstrap",
        network.nodes[0].address,
        env_extra={"SHARDROUTE_APPEND_ANNOUNCE": public},
    )
    assert f"{public}/p2p/{node.peer_id}" in node.cli("id")["addrs"]
    assert node.cli("announce", SHARDS[1], "--wait")["stored_on"] >= 1
    finder = network.nodes[3]
    rows = until(lambda: provider_rows(finder, SHARDS[1]), what="the NATed provider is found")
    assert public in rows[0]["addrs"]
    assert finder.cli("connect", f"{public}/p2p/{node.peer_id}")["peer_id"] == node.peer_id


def test_a_host_behind_nat_is_found_through_its_observed_address(network: Network) -> None:
    behind = network.testbed.nat("nat2", network.switch)
    public = f"/ip4/{behind.public_ip}/tcp/4001"  # type: ignore[attr-defined]
    node = serve(behind, network.tmp / "nat2", "--bootstrap", network.nodes[0].address)
    # It dials out to the others (bootstrap, lookups); each sees its router's address, and
    # four distinct IP groups saying so make it advertise that with its forwarded port.
    until(
        lambda: f"{public}/p2p/{node.peer_id}" in node.cli("id")["addrs"],
        seconds=60,
        what="observed address",
    )
    assert node.cli("announce", SHARDS[2], "--wait")["stored_on"] >= 1
    finder = network.nodes[2]
    rows = until(lambda: provider_rows(finder, SHARDS[2]), what="the NATed provider is found")
    assert public in rows[0]["addrs"]
    assert finder.cli("connect", f"{public}/p2p/{node.peer_id}")["peer_id"] == node.peer_id


def dropped_for_scope(nodes: list[NetNode]) -> float:
    """Addresses the nodes dropped as unusable by the peer that told them, all together."""
    return sum(n.metric("shardroute_peer_addrs_dropped_total", {"reason": "scope"}) for n in nodes)


@pytest.mark.anyio
async def test_go_and_js_peers_on_hosts_of_the_network_provide_and_find_both_ways(
    network: Network,
) -> None:
    go_host = network.testbed.host("go", network.switch)
    js_host = network.testbed.host("js", network.switch)
    seed = network.nodes[0]
    async with (
        start_peer("go", listen="/ip4/0.0.0.0/tcp/4001", wrapper=tuple(go_host.command([]))) as go,
        start_peer("js", listen="/ip4/0.0.0.0/tcp/4001", wrapper=tuple(js_host.command([]))) as js,
    ):
        peers = {"go": (go, go_host), "js": (js, js_host)}
        # shardroute nodes never hand a loopback address to another host: until go and js
        # join, nothing the nodes drop for its scope can be a loopback address
        before = dropped_for_scope(network.nodes)
        for peer, _ in peers.values():
            await peer.command("dial", addr=seed.address)
            # go admits a peer to its table only after a FIND_NODE check that follows identify
            with anyio.fail_after(30):
                while not (await peer.command("routing_table"))["size"]:  # noqa: ASYNC110
                    await anyio.sleep(0.2)  # a poll: the table is another process's
            await peer.command("bootstrap", timeout=30)
        # their loopback addresses, which they tell everyone, are dropped where they arrive
        seen = {row["peer_id"]: row["addrs"] for row in seed.cli("peers")}
        for kind, (peer, host) in peers.items():
            assert f"/ip4/{host.ip}/tcp/4001" in seen[peer.peer_id], (kind, seen[peer.peer_id])
            assert not any(a.startswith("/ip4/127.") for a in seen[peer.peer_id])
        # shardroute provides on one host; go and js find it with that host's real address
        provider = network.nodes[4]
        assert provider.cli("announce", SHARDS[3], "--wait")["stored_on"] >= 1
        cid = cid_of(SHARDS[3])
        for kind, (peer, _) in peers.items():
            answer = await peer.command("find_providers", cid=cid, count=1, timeout=30)
            found = {p["peer_id"]: p["addrs"] for p in answer["providers"]}
            assert provider.peer_id in found, f"{kind} did not find shardroute: {answer}"
            assert any(f"/ip4/{provider.host.ip}/tcp/4001" in a for a in found[provider.peer_id])
        # go and js provide; shardroute on another host finds each at its host's address
        finder = network.nodes[2]
        for kind, (peer, host) in peers.items():
            shard = hashlib.sha256(f"provided by {kind}".encode()).hexdigest()
            cid = cid_of(shard)
            await peer.command("provide", cid=cid, timeout=30)
            rows = until(lambda s=shard: provider_rows(finder, s), what=f"{kind}'s record")
            assert rows[0]["peer_id"] == peer.peer_id
            assert any(f"/ip4/{host.ip}/tcp/4001" in a for a in rows[0]["addrs"]), rows
            # go and js advertise their 127.0.0.1 too; it never leaves their host
            assert not any(a.startswith("/ip4/127.") for a in rows[0]["addrs"]), rows
            assert finder.cli("connect", f"/ip4/{host.ip}/tcp/4001/p2p/{peer.peer_id}")
        # what they told us of their loopback (identify, ADD_PROVIDER, closerPeers) was
        # dropped where it arrived, and counted there
        until(
            lambda: dropped_for_scope(network.nodes) > before,
            what="shardroute_peer_addrs_dropped_total{reason=scope} rises",
        )


def test_a_host_that_claims_other_ip_groups_still_counts_in_its_real_one(network: Network) -> None:
    """Five nodes on one host (one /16), each claiming ten addresses in /16s of its own: the
    victim's table takes at most three of them (go's per-table limit for one IP group)."""
    liar = network.testbed.host("liar", network.switch)
    victim = network.nodes[1]
    sybils = []
    claims: dict[str, set[str]] = {}
    for j in range(5):
        claimed = [f"/ip4/10.{100 + 10 * j + i}.0.7/tcp/4001" for i in range(10)]
        sybil = serve(
            liar,
            network.tmp / f"liar{j}",
            "--listen",
            f"/ip4/0.0.0.0/tcp/{4001 + j}",
            "--grpc",
            f"127.0.0.1:{7070 + j}",
            "--metrics",
            f"127.0.0.1:{9464 + j}",
            "--routing-http",
            f"127.0.0.1:{8190 + j}",
            "--bootstrap",
            victim.address,
            env_extra={"SHARDROUTE_ANNOUNCE": ",".join(claimed)},
            grpc_port=7070 + j,
        )
        sybils.append(sybil)
        claims[sybil.peer_id] = set(claimed)
    ids = set(claims)
    assert len(ids) == 5
    # Each one bootstrapped through the victim: it reached the victim and was answered.
    for sybil in sybils:
        until(
            lambda s=sybil: victim.peer_id in s.table(),
            what=f"{sybil.peer_id} bootstrapped through the victim",
        )
    # The victim has identified each (`connect` takes the open connection, waits for its
    # identify and runs the table's decision on it): the verdict is in for all five.
    in_table = {}
    for sybil in sybils:
        answer = victim.cli("connect", sybil.address)
        assert answer["peer_id"] == sybil.peer_id
        in_table[sybil.peer_id] = answer["dht_server"]
    admitted = ids & victim.table()
    assert admitted == {p for p, yes in in_table.items() if yes}, in_table
    assert 1 <= len(admitted) <= 3, f"{len(admitted)} of 5 sybils from one /16 in the table"
    rows = {r["peer_id"]: r["addrs"] for r in victim.cli("peers") if r["peer_id"] in ids}
    assert set(rows) == admitted
    for peer, addrs in rows.items():
        # what they claim reached the victim, and it did not move them out of their group
        assert claims[peer] & set(addrs), (peer, addrs)
        assert all(a in claims[peer] or a.startswith(f"/ip4/{liar.ip}/") for a in addrs), addrs
