"""DHT benchmark: provide and find-providers on 32-node networks of shardroute, go and js.

    python bench/bench_dht.py [--nodes 32] [--ops 40] [--no-write]

shardroute: 32 Nodes in this process, each with its own TCP listener on 127.0.0.1, bootstrapped
through one seed. go and js: 32 subprocesses each (tests/interop/peers), bootstrapped the same
way, timed through their JSON command pipe (which adds well under a millisecond).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import random
import resource
import statistics
import sys
import time
from contextlib import AsyncExitStack
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import write_section
from shardroute.clock import SystemClock
from shardroute.content import ContentId
from tests.interop.thirdparty import ThirdPartyPeer, start_peer
from tests.support.fleet import fleet
from tests.support.settings import LOOPBACK as SETTINGS


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclasses.dataclass
class Result:
    provide: list[float]
    find: list[float]
    requests: list[int] = dataclasses.field(default_factory=list)
    rounds: list[int] = dataclasses.field(default_factory=list)
    cpu_per_lookup: float | None = None

    def row(self, name: str) -> str:
        ms = lambda xs, q: f"{pct(xs, q) * 1000:.1f}"  # noqa: E731
        req = f"{statistics.mean(self.requests):.1f}" if self.requests else "n/a"
        rnd = f"{statistics.mean(self.rounds):.2f}" if self.rounds else "n/a"
        cpu = f"{self.cpu_per_lookup * 1000:.1f} ms" if self.cpu_per_lookup is not None else "n/a"
        return (
            f"| {name} | {ms(self.provide, 0.5)} | {ms(self.provide, 0.95)} | {ms(self.find, 0.5)} | "
            f"{ms(self.find, 0.95)} | {req} | {rnd} | {cpu} |"
        )


def cids(count: int) -> list[ContentId]:
    return [ContentId.from_shard_hash(os.urandom(32)) for _ in range(count)]


async def run_shardroute(nodes_count: int, ops: int) -> Result:
    rng = random.Random(1)
    async with fleet(SETTINGS, clock=SystemClock()) as crew:
        first = await crew.add()
        for _ in range(nodes_count - 1):
            await crew.add([first.addr], wait_joined=False)
        for member in crew.members:
            await member.app.joined.wait()
        nodes = [m.app for m in crew.members]
        async with anyio.create_task_group() as tg:
            for node in nodes:
                tg.start_soon(node.dht.get_closest_peers, node.peer_id.raw)
        result = Result([], [])
        cpu0 = cpu_seconds()
        lookups = 0
        for cid in cids(ops):
            provider, finder = rng.sample(nodes, 2)
            t0 = time.perf_counter()
            report = await provider.dht.provide(cid.dht_key)
            result.provide.append(time.perf_counter() - t0)
            result.requests.append(report.requests - report.accepted)
            result.rounds.append(report.rounds)
            reports = []
            t0 = time.perf_counter()
            async for _ in finder.dht.find_providers(cid.dht_key, 1, on_report=reports.append):
                break
            result.find.append(time.perf_counter() - t0)
            for r in reports:
                result.requests.append(r.requests)
                result.rounds.append(r.rounds)
            lookups += 1 + len(reports)
        result.cpu_per_lookup = (cpu_seconds() - cpu0) / lookups
        return result


async def run_third_party(kind: str, nodes_count: int, ops: int) -> Result:
    rng = random.Random(2)
    async with AsyncExitStack() as stack:
        peers: list[ThirdPartyPeer] = []
        limiter = anyio.CapacityLimiter(4)  # start a few at a time on 2 cores
        async with anyio.create_task_group() as tg:

            async def start() -> None:
                async with limiter:
                    peers.append(await stack.enter_async_context(start_peer(kind)))  # type: ignore[arg-type]

            for _ in range(nodes_count):
                tg.start_soon(start)
        seed = peers[0]
        for peer in peers[1:]:
            for attempt in range(3):  # 32 fresh processes on 2 cores: the first dial may time out
                try:
                    await peer.command("dial", addr=seed.addrs[0])
                    break
                except Exception:
                    if attempt == 2:
                        raise
                    await anyio.sleep(1)
        for peer in peers:
            try:
                await peer.command("bootstrap", timeout=30)
            except Exception:
                pass
        await anyio.sleep(3)  # go's bootstrap returns before its refresh ends (interop-peers.md)
        result = Result([], [])
        for cid in cids(ops):
            provider, finder = rng.sample(peers, 2)
            t0 = time.perf_counter()
            await provider.command("provide", cid=str(cid), timeout=30)
            result.provide.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            answer = await finder.command("find_providers", cid=str(cid), count=1, timeout=30)
            result.find.append(time.perf_counter() - t0)
            if not answer["providers"]:
                print(f"{kind}: a find came back empty", file=sys.stderr)
        return result


async def main(args: argparse.Namespace) -> None:
    results = {"shardroute": await run_shardroute(args.nodes, args.ops)}
    for kind in ("go", "js"):
        results[kind] = await run_third_party(kind, args.nodes, args.ops)
    sr = results["shardroute"]
    ratios = "\n".join(
        f"- {kind}: shardroute's find-providers p50 is {pct(sr.find, 0.5) / pct(r.find, 0.5):.2f}x {kind}'s, "
        f"provide p50 {pct(sr.provide, 0.5) / pct(r.provide, 0.5):.2f}x"
        for kind, r in results.items()
        if kind != "shardroute"
    )
    body = f"""
Script: `bench/bench_dht.py`. {args.nodes} nodes per implementation on 127.0.0.1, {args.ops} provides
and {args.ops} find-providers (count 1), each from a random node for a fresh random CID. Requests and
rounds are per lookup (provide's FIND_NODE lookup and find's GET_PROVIDERS lookup); CPU is this
process's CPU time divided by lookups (all 32 shardroute nodes, both ends of every request, run in
this process). go and js are timed through their command pipes; their request counts are not
exposed by the bindings.

| implementation | provide p50 ms | provide p95 ms | find p50 ms | find p95 ms | requests/lookup | rounds/lookup | CPU/lookup |
|---|---|---|---|---|---|---|---|
{chr(10).join(r.row(k) for k, r in results.items())}

Ratios (shardroute / other):
{ratios}
"""
    print(body)
    if not args.no_write:
        write_section("DHT on 32-node networks (issue 3)", body)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nodes", type=int, default=32)
    parser.add_argument("--ops", type=int, default=40)
    parser.add_argument("--no-write", action="store_true")
    anyio.run(main, parser.parse_args(), backend="asyncio")
