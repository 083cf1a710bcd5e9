"""Republish cost: 100,000 announced shards in a simulated 1,000-node network.

The network is `MemoryNetwork`: every node runs the real routing table, lookups and request
handler, and messages go through the real protobuf codec, but no sockets. One node announces the
shards through the real `Publisher` (SQLite announcement store in a temporary folder) and the
script runs one whole republish cycle of virtual time. It reports lookups and messages per
republished shard, and the announcer's CPU seconds per 1,000 shards: the process CPU of the
cycle minus the time spent inside the other nodes' handlers (their side of the traffic), then
that figure extrapolated to one million shards per 12 hours.

    python bench/bench_republish.py [--nodes 1000] [--shards 100000] [--no-write]
    python bench/bench_republish.py --tree before=/path/to/old/checkout --tree after=. \
        [--nodes 200] [--shards 10000] [--rounds 2] [--no-write]

With `--tree`, each run is a child process with that tree's `shardroute` and `tests.support`
first on its path (this script's code drives it, through APIs older trees share), trees run
alternately, and the medians are compared in one table.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

import anyio

# A child run of `--tree` gets that tree first; `bench.common` always comes from here.
sys.path.insert(0, os.environ.get("BENCH_TREE", str(Path(__file__).resolve().parent.parent)))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

from shardroute.config import Settings
from shardroute.content import ContentId
from shardroute.identity.peer_id import PeerId
from shardroute.kad.dht import DhtConfig
from shardroute.kad.handler import KadHandler
from shardroute.kad.messages import KadMessage
from shardroute.maintenance.republish import Publisher
from shardroute.store.database import SqliteStore
from tests.support.cluster import Cluster


class HandlerClock:
    """Process CPU while any of the other nodes' handlers runs. A handler that waits lets
    others (and the announcer) run inside its interval, so intervals are merged: time is
    counted once however many handlers are open, never more than the cycle's own."""

    def __init__(self) -> None:
        self.open = 0
        self.since = 0.0
        self.total = 0.0

    def enter(self) -> None:
        if self.open == 0:
            self.since = time.process_time()
        self.open += 1

    def leave(self) -> None:
        self.open -= 1
        if self.open == 0:
            self.total += time.process_time() - self.since


class TimedHandler:
    """A node's handler, timed on the shared `HandlerClock`."""

    def __init__(self, inner: KadHandler, clock: HandlerClock) -> None:
        self.inner = inner
        self.clock = clock

    async def handle(self, sender: PeerId, request: KadMessage) -> KadMessage | None:
        self.clock.enter()
        try:
            return await self.inner.handle(sender, request)
        finally:
            self.clock.leave()


def schedule(path: Path) -> dict[bytes, float]:
    """Each announced shard's next publish time, read straight from the database file."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT key, next_publish_at FROM announcements").fetchall()
        return {key: next_at for key, next_at in rows}
    finally:
        conn.close()


async def run(nodes: int, shards: int) -> dict[str, float]:
    config = DhtConfig(diversity=False, query_timeout=60.0, request_timeout=60.0)
    async with Cluster(seed=5, config=config, codec=True) as cluster:
        t = time.perf_counter()
        await cluster.build(nodes)
        build_s = time.perf_counter() - t
        handlers = HandlerClock()
        announcer = cluster.nodes[0]
        for node in cluster.nodes[1:]:
            node.endpoint.serve(TimedHandler(node.dht.handler, handlers))
        with tempfile.TemporaryDirectory() as folder:
            store = await SqliteStore.open(
                Path(folder), max_providers_per_key=Settings().max_providers_per_key
            )
            try:
                publisher = Publisher(
                    announcer.dht, store.announcements, cluster.clock, republish_interval=12 * 3600
                )
                cids = [ContentId.from_shard_hash(os.urandom(32)) for _ in range(shards)]
                async with anyio.create_task_group() as tg:
                    tg.start_soon(publisher.run)
                    t = time.perf_counter()
                    for start in range(0, shards, 10_000):
                        await publisher.announce(cids[start : start + 10_000])
                    await publisher.drained()
                    await cluster.clock.wait_sleepers(1, stall_limit=3600)
                    first_s = time.perf_counter() - t
                    first = (publisher.stats.shards, publisher.stats.lookups)
                    sent_before = sum(cluster.network.delivered.values())
                    cpu0, handler0, wall0 = time.process_time(), handlers.total, time.perf_counter()
                    stats0 = (publisher.stats.shards, publisher.stats.lookups)
                    schedule0 = schedule(store.path)
                    end = cluster.clock.monotonic() + publisher.cycle + publisher.window()
                    await cluster.clock.run_until(end, sleepers=1, stall_limit=3600)
                    cycle_cpu = time.process_time() - cpu0
                    cycle_handlers = handlers.total - handler0
                    cycle_wall = time.perf_counter() - wall0
                    messages = sum(cluster.network.delivered.values()) - sent_before
                    done = publisher.stats.shards - stats0[0]
                    lookups = publisher.stats.lookups - stats0[1]
                    # a shard the cycle republished has a new slot; one it missed does not
                    schedule1 = schedule(store.path)
                    renewed = sum(1 for k, at in schedule0.items() if schedule1[k] != at)
                    tg.cancel_scope.cancel()
            finally:
                await store.close()
    own_cpu = cycle_cpu - cycle_handlers
    per_1000 = own_cpu / done * 1000
    return {
        "build_s": build_s,
        "first_s": first_s,
        "first_shards": first[0],
        "first_lookups": first[1],
        "cycle_shards": done,
        "renewed": renewed,
        "announced": len(schedule0),
        "cycle_lookups": lookups,
        "cycle_messages": messages,
        "cycle_cpu": cycle_cpu,
        "cycle_handlers": cycle_handlers,
        "cycle_wall": cycle_wall,
        "cpu_per_1000": per_1000,
        "cycle_hours": publisher.cycle / 3600,
        "core_share_1m": per_1000 * 1000 / (12 * 3600),
    }


def compare(trees: list[tuple[str, Path]], nodes: int, shards: int, rounds: int) -> str:
    from bench.common import commit_of, run_in_tree

    runs: dict[str, list[dict[str, float]]] = {label: [] for label, _ in trees}
    for r in range(rounds):
        for label, path in trees:
            argv = ["--nodes", str(nodes), "--shards", str(shards)]
            result = run_in_tree(Path(__file__).resolve(), path, argv, timeout=3600)
            runs[label].append(result)
            print(f"round {r + 1} {label}: {json.dumps(result)}", flush=True)

    def median(label: str, what: str) -> float:
        return statistics.median(x[what] for x in runs[label])

    base = trees[0][0]
    rows = []
    for label, path in trees:
        worst = min(x["renewed"] / x["announced"] for x in runs[label])
        rows.append(
            f"| {label} ({commit_of(path)}) | {worst:.2%} | "
            f"{median(label, 'cycle_lookups') / median(label, 'cycle_shards'):.5f} | "
            f"{median(label, 'cycle_messages') / median(label, 'cycle_shards'):.3f} | "
            f"{median(label, 'first_s'):.1f} | {median(label, 'cycle_cpu'):.1f} | "
            f"{median(label, 'cycle_handlers'):.1f} | {median(label, 'cpu_per_1000'):.3f} | "
            f"{median(label, 'cycle_cpu') / median(base, 'cycle_cpu'):.2f}x |"
        )
    return (
        f"`bench/bench_republish.py --nodes {nodes} --shards {shards}`, source trees compared: "
        f"each tree run {rounds} times, alternately, in child processes; medians. The cycle is "
        "one whole republish cycle of virtual time after the first publication.\n\n"
        "| tree | republished (worst run) | lookups per shard | messages per shard | "
        "first publication, wall s | cycle CPU s | of it in others' handlers | "
        f"announcer CPU s per 1,000 | cycle CPU vs {base} |\n"
        "|---|---|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=None, help="1000; 200 with --tree")
    parser.add_argument("--shards", type=int, default=None, help="100,000; 10,000 with --tree")
    parser.add_argument("--tree", action="append", default=[], help="label=path, two or more")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(anyio.run(run, args.nodes, args.shards)))
        return
    if args.tree:
        from bench.common import parse_trees

        body = compare(
            parse_trees(args.tree), args.nodes or 200, args.shards or 10_000, args.rounds
        )
        print(body)
        if not args.no_write:
            from bench.common import write_section

            write_section("Republishing, source trees compared", body)
        return
    args.nodes = args.nodes or 1000
    args.shards = args.shards or 100_000
    r = anyio.run(run, args.nodes, args.shards)
    body = f"""
`bench/bench_republish.py --nodes {args.nodes} --shards {args.shards}`: one node announces the
shards in a simulated {args.nodes}-node network (MemoryNetwork, real routing tables, lookups,
handlers and protobuf codec), then one whole republish cycle ({r["cycle_hours"]:.2f} h: the 12 h
interval shortened to end before the 12 h TTL) runs in virtual time.

| | figure | aim |
|---|---|---|
| announced shards republished at least once in the cycle | {r["renewed"]:,.0f} of {r["announced"]:,.0f} | every one |
| shard publications in the cycle | {r["cycle_shards"]:,.0f} | |
| lookups per republished shard | {r["cycle_lookups"] / r["cycle_shards"]:.5f} ({r["cycle_lookups"]:.0f} lookups) | < 0.01 |
| messages per republished shard (all types) | {r["cycle_messages"] / r["cycle_shards"]:.3f} | <= 21 (20 ADD_PROVIDER is the floor) |
| announcer CPU per 1,000 shards | {r["cpu_per_1000"]:.3f} s | |
| one million shards per 12 h | {100 * r["core_share_1m"]:.2f} % of one core | < 10 % |

The first publication of all {r["first_shards"]:,.0f} shards (announced at once) took
{r["first_lookups"]:.0f} lookups and {r["first_s"]:.1f} s of wall time. Announcer CPU is the
process CPU of the cycle ({r["cycle_cpu"]:.1f} s) minus the time spent inside the other nodes'
request handlers ({r["cycle_handlers"]:.1f} s); it still includes encoding every message and
the SQLite schedule updates. Building the network took {r["build_s"]:.0f} s.
"""
    print(body)
    if not args.no_write:
        from bench.common import write_section

        write_section("Republishing (issue 5)", body)


if __name__ == "__main__":
    main()
