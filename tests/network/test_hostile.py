"""Hostile peers against one `shardroute serve` (issue 12's proof), on namespace hosts: the
attacker, the victim and the honest peers each on a host (and IP group) of their own, with the
private-address exemption off so the per-address and per-group budgets apply to 10.x.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from shardroute import limits
from shardroute.addrs import ip_group
from shardroute.content import ContentId
from shardroute.identity.peer_id import PeerId
from tests.interop.thirdparty import start_peer
from tests.network.test_hosts import NetNode, cid_of, serve
from tests.support.probes import HOSTILE, refusals, scrape, status_kib
from tests.support.testbed import NetHost, Testbed, available, stop

pytestmark = pytest.mark.network

SHARD = "5eed" * 16
# Honest work must not wait on the attacker's: each step within this (the brief's budget).
HONEST_STEP_SECONDS = 2.0
# What the attacker holds (the numbers): idle sockets, stalled multistream
# negotiations, and streams on its one real connection.
ATTACK = {"idle": 1000, "stalled": 200, "streams": 1000}


@pytest.fixture
def testbed(request: pytest.FixtureRequest) -> Iterator[Testbed]:
    reason = available()
    if reason:
        pytest.fail(f"the hostile-peer tests need network namespaces: {reason}")
    # A prefix of our own: test_hosts' module-wide testbed may be up at the same time.
    tag = "hc" if "connection" in request.node.name else "hr"
    with Testbed(f"{tag}{os.getpid() % 100000}") as bed:
        yield bed


def attacker(host: NetHost, log: Path, mode: str, *args: str) -> subprocess.Popen[str]:
    return host.start(
        [sys.executable, HOSTILE, mode, *args], log=log, stdin=subprocess.PIPE, cwd=log.parent
    )


def read_event(proc: subprocess.Popen[str], log: Path) -> dict[str, Any]:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line, f"the attacker exited: {log.read_text(errors='replace')[-3000:]}"
    return dict(json.loads(line))


def tell(proc: subprocess.Popen[str], log: Path, line: str) -> dict[str, Any]:
    """Send the attacker a line (`mark`, `report`) and read its answer."""
    assert proc.stdin is not None
    proc.stdin.write(line + "\n")
    proc.stdin.flush()
    event = read_event(proc, log)
    assert event["event"] == line, event
    return event


def serve_pid(node: NetNode) -> int:
    """The serve process (`ip netns exec` execs it, so the Popen's pid is python's)."""
    proc = node.host.processes[0]
    assert b"serve" in Path(f"/proc/{proc.pid}/cmdline").read_bytes()
    return proc.pid


@pytest.mark.timeout(170)
@pytest.mark.anyio
async def test_a_connection_flood_from_one_host_leaves_honest_peers_served(
    testbed: Testbed, tmp_path: Path
) -> None:
    switch = testbed.switch("sw")
    hosts = (testbed.host(n, switch) for n in ("v", "a", "g", "h", "p"))
    v_host, a_host, g_host, h_host, p_host = hosts
    victim = serve(v_host, tmp_path / "v")
    pid = serve_pid(victim)
    # A provider record stored on V, then its provider gone: a find can only be answered by V.
    provider = serve(p_host, tmp_path / "p", "--bootstrap", victim.address)
    assert provider.cli("announce", SHARD, "--wait")["stored_on"] == 1
    stop(p_host.processes[0])
    assert victim.cli("status")["stored_records"] == 1
    rss_before = status_kib(pid, "VmRSS")

    log = tmp_path / "attacker.log"
    counts = [a for kind, n in ATTACK.items() for a in (f"--{kind}", str(n))]
    attack = attacker(a_host, log, "connections", victim.address, *counts)
    ready = await anyio.to_thread.run_sync(read_event, attack, log)
    print("attacker ready:", json.dumps(ready))
    assert ready["event"] == "ready", ready
    # The whole attack is in place before any honest peer comes: every idle socket connected,
    # every stalled negotiation begun (its multistream header sent), every stream on the one
    # real connection opened and its header sent. The victim accepted the TCP connections and
    # the streams (then dropped what is over budget: the attacker opens those again).
    assert ready["complete"], ready
    for kind, wanted in ATTACK.items():
        assert ready[kind]["slots_begun"] == ready[kind]["slots"] == wanted, (kind, ready)

    # An honest go peer: dial, ping, find, each timed here (its control channel is a pipe).
    async with start_peer(
        "go", listen="/ip4/0.0.0.0/tcp/4001", wrapper=tuple(g_host.command([]))
    ) as go:
        # From here until the honest shardroute node is done, the attacker counts what it
        # opens and begins (again: the victim drops what is over budget), and the slots it
        # held at some moment.
        await anyio.to_thread.run_sync(tell, attack, log, "mark")
        go_seconds = {}
        start = time.monotonic()
        await go.command("dial", addr=victim.address, timeout=10)
        go_seconds["connect"] = time.monotonic() - start
        start = time.monotonic()
        await go.command("ping", addr=victim.address, timeout=10)
        go_seconds["ping"] = time.monotonic() - start
        # go admits a peer to its table only after a FIND_NODE check that follows identify;
        # its lookups start from the table.
        start = time.monotonic()
        with anyio.fail_after(30):
            while not (await go.command("routing_table"))["size"]:  # noqa: ASYNC110
                await anyio.sleep(0.1)  # a poll: the table is another process's
        go_seconds["table"] = time.monotonic() - start
        start = time.monotonic()
        found = await go.command("find_providers", cid=cid_of(SHARD), count=1, timeout=10)
        go_seconds["find"] = time.monotonic() - start
    assert [p["peer_id"] for p in found["providers"]] == [provider.peer_id], found

    # An honest shardroute node on its own host, timing its steps in process.
    honest = await anyio.to_thread.run_sync(
        lambda: h_host.run(
            sys.executable, HOSTILE, "honest", victim.address, "--key", SHARD, timeout=90
        )
    )
    assert honest.returncode == 0, honest.stderr[-3000:]
    report = json.loads(honest.stdout.splitlines()[-1])
    assert report["peer"] == victim.peer_id
    assert report["providers"] == [provider.peer_id], report
    # All the while, the attack went on: the victim kept dropping what is over budget and
    # the attacker kept opening it again, every kind of it, and its real connection stayed.
    # (How many it held at once is the victim's to decide, not the attacker's: the victim
    # drops sockets past the address's budget and its accept queue slows the reconnects, so
    # the attacker's `held_since_mark`, printed below, varies from run to run.)
    during = await anyio.to_thread.run_sync(tell, attack, log, "report")
    print("attacker during the honest work:", json.dumps(during))
    # Sockets over budget are dropped at once and opened again, but a stalled stream lasts
    # until the negotiation deadline, which the honest work may finish inside (seen once:
    # 256 streams held throughout, none begun again). Wait for that round, bounded.
    with anyio.fail_after(limits.STREAM_NEGOTIATION_TIMEOUT + 15):
        while not all(during[kind]["begun_since_mark"] > 0 for kind in ATTACK):
            await anyio.sleep(1)
            during = await anyio.to_thread.run_sync(tell, attack, log, "report")
    assert during["connection_open"], during

    metrics = await anyio.to_thread.run_sync(scrape, v_host)
    rss_peak = status_kib(pid, "VmHWM")
    assert attack.stdin is not None
    attack.stdin.close()
    done = await anyio.to_thread.run_sync(read_event, attack, log)
    stop(attack)
    print(
        json.dumps(
            {
                "go_seconds": go_seconds,
                "shardroute_seconds": report["seconds"],
                "rss_before_kib": rss_before,
                "rss_peak_kib": rss_peak,
                "refusals": {f"{s}/{r}": n for (s, r), n in refusals(metrics).items() if n},
                "attacker_ready": ready,
                "attacker_during": during,
                "attacker": done,
            }
        )
    )

    for who, seconds in (("go", go_seconds), ("shardroute", report["seconds"])):
        for step, took in seconds.items():
            assert took < HONEST_STEP_SECONDS, f"{who} {step} took {took:.2f} s: {seconds}"
    # The peak resident size while under attack, against what it was before.
    assert rss_peak - rss_before < 100 * 1024, (rss_before, rss_peak)
    refused = refusals(metrics)
    # Sockets past the address's share were refused before any handshake work ...
    assert refused[("ip", "pending_upgrades")] + refused[("ip", "connections")] > 0, refused
    # ... and streams past the peer's share were refused as they opened.
    assert refused[("peer", "inbound_streams")] > 0, refused
    # The attacker's real connection itself survived: refusing streams is not a disconnect.
    assert done["connection_open"], done
    # Most of the attacker's sockets were dropped by the victim, not left to hold slots.
    assert done["idle"]["dropped_by_victim"] >= 900, done


# Small quotas, so the bounds show: one provider, one IP group, one key's share of a group.
PER_PEER, PER_GROUP, PER_KEY_PER_GROUP = 1000, 1500, 3
QUOTAS = {
    "SHARDROUTE_MAX_RECORDS_PER_PEER": str(PER_PEER),
    "SHARDROUTE_MAX_RECORDS_PER_IP_GROUP": str(PER_GROUP),
    "SHARDROUTE_MAX_PROVIDERS_PER_KEY_PER_GROUP": str(PER_KEY_PER_GROUP),
}
KEYS, SYBILS, EXTRA_KEYS = 10_000, 200, 10
K = "cafe" * 16


@pytest.mark.timeout(170)
def test_a_record_flood_keeps_the_real_provider_and_stays_within_the_quotas(
    testbed: Testbed, tmp_path: Path
) -> None:
    switch = testbed.switch("sw")
    v_host, a_host, h_host, g_host = (testbed.host(n, switch) for n in ("v", "a", "h", "g"))
    victim = serve(v_host, tmp_path / "v", env_extra=QUOTAS)
    real = serve(h_host, tmp_path / "h", "--bootstrap", victim.address)
    assert real.cli("announce", K, "--wait")["stored_on"] == 1

    # One peer ID with 10,000 keys, then 200 fresh peer IDs (each its own connection) with K
    # and ten keys of their own each; every request acknowledged by a PING behind it.
    result = a_host.run(
        sys.executable, HOSTILE, "flood", victim.address, "--key", K, "--keys", str(KEYS),
        "--sybils", str(SYBILS), "--extra-keys", str(EXTRA_KEYS), "--own-ip", a_host.ip,
        timeout=150,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    flood = json.loads(result.stdout.splitlines()[-1])
    print(json.dumps({k: v for k, v in flood.items() if k != "sybils"}))
    assert flood["keys_acked"] == KEYS, flood
    assert len(flood["sybils"]) == SYBILS, flood
    sybil_records = SYBILS * (1 + EXTRA_KEYS)
    assert flood["sybil_records_acked"] == sybil_records

    # K's real provider is still handed out by V: asked directly, by V's own find, and by an
    # honest node on another host that knows only V.
    answer = g_host.run(sys.executable, HOSTILE, "query", victim.address, "--key", K)
    assert answer.returncode == 0, answer.stderr[-3000:]
    providers = json.loads(answer.stdout.splitlines()[-1])["providers"]
    assert f"/ip4/{h_host.ip}/tcp/4001" in providers[real.peer_id], providers
    assert len(providers) == 1 + PER_KEY_PER_GROUP, providers
    found = {row["peer_id"] for row in victim.cli("find", K, "--count", "20")}
    assert real.peer_id in found
    honest = g_host.run(
        sys.executable, HOSTILE, "honest", victim.address, "--key", K, "--count", "4",
        timeout=90,
    )  # fmt: skip
    assert honest.returncode == 0, honest.stderr[-3000:]
    assert real.peer_id in json.loads(honest.stdout.splitlines()[-1])["providers"]
    assert real.peer_id in {row["peer_id"] for row in real.cli("find", K, "--count", "20")}

    # Every refused record counted: the flooder's past its quota, the Sybils' past the group's.
    refused = refusals(scrape(v_host))
    assert refused[("peer", "provider_records")] == KEYS - PER_PEER, refused
    assert refused[("ip", "provider_records")] == sybil_records - (PER_GROUP - PER_PEER), refused
    stored = victim.cli("status")["stored_records"]

    # What V keeps, read from its database once it stopped.
    stop(v_host.processes[0])
    group = ip_group(a_host.ip, exempt_private=False)
    flooder = PeerId.parse(flood["keys_flooder"]).raw
    key = ContentId.from_shard_hash(bytes.fromhex(K)).dht_key
    db = sqlite3.connect(tmp_path / "v" / "shardroute-data" / "shardroute.sqlite3")
    try:

        def count(where: str, *args: object) -> int:
            sql = (
                "SELECT count(*) FROM provider_records r"
                " JOIN provider_peers p ON p.id = r.provider_id"
            )
            return int(db.execute(f"{sql} WHERE {where}", args).fetchone()[0])

        total = count("1")
        assert count("p.peer = ?", flooder) == PER_PEER
        assert count("r.source_group = ?", group) == PER_GROUP
        assert count("r.key = ? AND r.source_group = ?", key, group) == PER_KEY_PER_GROUP
        assert count("r.key = ? AND p.peer = ?", key, PeerId.parse(real.peer_id).raw) == 1
    finally:
        db.close()
    # The attacker's group's share and the real record; nothing else came in.
    assert total == stored == PER_GROUP + 1, (total, stored)
