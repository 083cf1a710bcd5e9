"""Dialing past a dead address on the multi-host test network (issue 11).

Two namespace hosts (tests/support/testbed.py): B runs `shardroute serve`; on A a throwaway
host dials B with a dead address listed before B's real one, N times, a fresh connection each
time. Two kinds of dead: a port nothing listens on (refused at once) and an address no host has
(SYNs go unanswered until the kernel gives up). Reports how long each dial took to reach B.

    sudo .venv/bin/python bench/bench_dial.py [--dials 30]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import write_section  # noqa: E402


async def _worker(peer: str, live: str, dead: list[str], dials: int) -> None:
    """Runs on host A: dial `peer` at [dead..., live] `dials` times; prints seconds per dial."""
    import anyio

    from shardroute.addrs import parse_multiaddr
    from shardroute.identity.keys import Ed25519PrivateKey
    from shardroute.identity.peer_id import PeerId
    from shardroute.net.host import Host

    target = PeerId.parse(peer)
    out: dict[str, list[float]] = {}
    for kind, address in [("refused", dead[0]), ("unanswered", dead[1])]:
        times = []
        for _ in range(dials):
            async with Host(Ed25519PrivateKey.generate()) as host:
                started = time.perf_counter()
                with anyio.fail_after(30):
                    await host.connect(target, [parse_multiaddr(address), parse_multiaddr(live)])
                times.append(time.perf_counter() - started)
        out[kind] = times
    print(json.dumps(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dials", type=int, default=30)
    parser.add_argument("--worker", nargs=4, metavar=("PEER", "LIVE", "REFUSED", "UNANSWERED"))
    args = parser.parse_args()
    if args.worker:
        import anyio

        peer, live, refused, unanswered = args.worker
        anyio.run(_worker, peer, live, [refused, unanswered], args.dials, backend="asyncio")
        return

    from tests.support.testbed import Testbed, available

    reason = available()
    if reason:
        raise SystemExit(f"needs network namespaces: {reason}")
    with tempfile.TemporaryDirectory() as tmp, Testbed(prefix="srbench") as testbed:
        switch = testbed.switch("sw")
        a, b = testbed.host("a", switch), testbed.host("b", switch)
        serve = b.start(
            [sys.executable, "-m", "shardroute", "serve", "--data-dir", tmp],
            log=Path(tmp) / "serve.log",
        )
        assert serve.stdout is not None
        printed = [serve.stdout.readline().strip() for _ in range(2)]
        line = next(p for p in printed if f"/ip4/{b.ip}/" in p)
        live, _, peer = line.rpartition("/p2p/")
        refused = f"/ip4/{b.ip}/tcp/4999"
        unanswered = "/ip4/10.99.0.99/tcp/4001"  # on the LAN, but no host has it
        result = a.run(
            sys.executable, str(Path(__file__).resolve()), "--dials", str(args.dials),
            "--worker", peer, live, refused, unanswered, timeout=600,
        )  # fmt: skip
        if result.returncode != 0:
            raise SystemExit(result.stderr)
        times = json.loads(result.stdout)

    def row(kind: str, what: str) -> str:
        ms = sorted(t * 1000 for t in times[kind])
        p95 = ms[min(len(ms) - 1, int(0.95 * len(ms)))]
        return f"| {what} | {len(ms)} | {statistics.median(ms):.0f} ms | {p95:.0f} ms | {max(ms):.0f} ms |"

    body = f"""
`bench/bench_dial.py`: a dial from one namespace host to another whose first listed address is
dead; each dial a fresh host and connection, the live address second. The dialer starts the next
address when the one before fails or {250} ms after it started (aim: the live address reached in
under 1 s).

| first address | dials | p50 | p95 | max |
|---|---|---|---|---|
{row("refused", "a port nothing listens on (refused)")}
{row("unanswered", "an address no host has (SYNs unanswered)")}
"""
    write_section("Dialing past a dead address (issue 11)", body)
    print(body)


if __name__ == "__main__":
    main()
