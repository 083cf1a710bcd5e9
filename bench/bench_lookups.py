"""Lookup throughput of one source tree against another: what a change costs per lookup.

    .venv/bin/python bench/bench_lookups.py --tree before=/path/to/old/checkout \
        --tree after=. [--nodes 24] [--lookups 600] [--concurrency 8] [--rounds 3] [--write NAME]
    .venv/bin/python bench/bench_lookups.py --tree with=. --tree without=. \
        --without-accounting without   # what resource accounting costs

Each run is a child process with that tree first on its path: N whole nodes (`App`s, over TCP
on 127.0.0.1, the tree's own `tests.support.fleet`) join through the first, then run
`get_closest_peers` for random keys from random nodes, `--concurrency` at a time. Throughput is
requests (FIND_NODE round trips) per wall second, cost is CPU milliseconds per request (this
process does both ends of every request); per lookup they vary with each run's fresh tables. Trees run alternately, `--rounds` times
each, so drift in the machine's load falls on both; the medians are compared.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def without_accounting() -> None:
    """What resource accounting costs, measured by taking it away: stream and memory budgets
    and the kad rate limits always grant (a benchmark's patch; the node has no such switch)."""
    from shardroute.kad.fairness import RequestLimiter
    from shardroute.net.resources import Reservation, ResourceManager

    def granted(*args: object, **kwargs: object) -> Reservation:
        return Reservation(None)

    ResourceManager.open_stream = granted  # type: ignore[method-assign]
    ResourceManager.serve_protocol = granted  # type: ignore[method-assign]
    ResourceManager.grow_memory = lambda self, peer, n: True  # type: ignore[method-assign]
    ResourceManager.shrink_memory = lambda self, peer, n: None  # type: ignore[method-assign]
    RequestLimiter.allow = lambda self, peer, kind: True  # type: ignore[method-assign]


async def worker(nodes: int, lookups: int, concurrency: int, seed: int) -> dict[str, float]:
    import anyio

    from shardroute.clock import SystemClock
    from tests.support.fleet import fleet
    from tests.support.settings import LOOPBACK

    rng = random.Random(seed)
    async with fleet(LOOPBACK, clock=SystemClock()) as crew:
        first = await crew.add([])
        for _ in range(nodes - 1):
            await crew.add([first.addr])
        await anyio.sleep(2.0)  # identify and table admission settle
        members = list(crew.members)
        keys = [rng.randbytes(32) for _ in range(lookups)]
        origins = [rng.choice(members) for _ in range(lookups)]
        limiter = anyio.CapacityLimiter(concurrency)
        answered = requests = 0

        async def one(i: int) -> None:
            nonlocal answered, requests
            async with limiter:
                report = await origins[i].app.dht.get_closest_peers(keys[i])
                answered += len(report.peers) > 0
                requests += report.requests

        cpu, wall = cpu_seconds(), time.perf_counter()
        async with anyio.create_task_group() as tg:
            for i in range(lookups):
                tg.start_soon(one, i)
        wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
        await crew.close()
    return {
        "lookups_per_s": lookups / wall,
        "cpu_ms_per_lookup": 1000 * cpu / lookups,
        "requests_per_s": requests / wall,
        "cpu_ms_per_request": 1000 * cpu / requests,
        "answered": answered / lookups,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tree", action="append", default=[], help="label=path, two or more")
    p.add_argument("--nodes", type=int, default=24)
    p.add_argument("--lookups", type=int, default=600)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seed", type=int, default=12)
    p.add_argument(
        "--without-accounting",
        action="append",
        default=[],
        metavar="LABEL",
        help="run that tree with stream, memory and rate budgets always granting",
    )
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--no-accounting", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--write", default="", help="write the table as this docs/benchmarks.md section")
    p.add_argument("--note", default="", help="a paragraph for the section")
    args = p.parse_args(argv)
    if args.worker:
        import anyio

        if args.no_accounting:
            without_accounting()
        result = anyio.run(worker, args.nodes, args.lookups, args.concurrency, args.seed)
        print(json.dumps(result))
        return
    sys.path.insert(0, str(ROOT))
    from bench.common import commit_of, parse_trees, run_in_tree, write_section

    trees = parse_trees(args.tree)
    unknown = set(args.without_accounting) - {label for label, _ in trees}
    if unknown:
        p.error(f"--without-accounting: no tree labelled {', '.join(sorted(unknown))}")
    runs: dict[str, list[dict[str, float]]] = {label: [] for label, _ in trees}
    for r in range(args.rounds):
        for label, path in trees:
            result = run_in_tree(
                Path(__file__).resolve(),
                path,
                [f"--{k}={getattr(args, k)}" for k in ("nodes", "lookups", "concurrency")]
                + [f"--seed={args.seed + r}"]
                + (["--no-accounting"] if label in args.without_accounting else []),
                timeout=900,
            )
            runs[label].append(result)
            print(f"round {r + 1} {label}: {json.dumps(result)}", flush=True)
    base = trees[0][0]
    rows = []

    def median(label: str, what: str) -> float:
        return statistics.median(x[what] for x in runs[label])

    for label, path in trees:
        ratio = median(label, "requests_per_s") / median(base, "requests_per_s")
        rows.append(
            f"| {label} ({commit_of(path)}) | {median(label, 'lookups_per_s'):.1f} | "
            f"{median(label, 'requests_per_s'):.0f} | {median(label, 'cpu_ms_per_request'):.3f} | "
            f"{min(x['answered'] for x in runs[label]):.0%} | {100 * (ratio - 1):+.1f} % |"
        )
    body = (
        f"Script: `bench/bench_lookups.py`. {args.nodes} nodes in one process over TCP on "
        f"127.0.0.1, {args.lookups} `get_closest_peers` lookups for random keys from random "
        f"nodes, {args.concurrency} at a time; each tree run {args.rounds} times, alternately; "
        "medians. Each run's nodes have fresh identities, so tables and lookup lengths differ "
        "from run to run: requests (FIND_NODE round trips) per second and CPU per request are "
        "the comparable figures; CPU covers both ends of every request.\n\n"
        "| tree | lookups/s | requests/s | CPU ms/request | answered (worst run) | "
        f"requests/s vs {base} |\n|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n"
    )
    if args.note:
        body += f"\n{args.note}\n"
    print(body)
    if args.write:
        write_section(args.write, body)


if __name__ == "__main__":
    main()
