"""Lookup throughput of one source tree against another: what a change costs per lookup.

    .venv/bin/python bench/bench_lookups.py --tree before=/path/to/old/checkout \
        --tree after=. [--nodes 24] [--lookups 600] [--concurrency 8] [--rounds 3] [--write NAME]
    .venv/bin/python bench/bench_lookups.py --tree with=. --tree without=. \
        --without-accounting without   # what resource accounting costs
    .venv/bin/python bench/bench_lookups.py --accounting-blocks 12 [--write NAME]
        # the same, within one network: blocks of lookups with and without, in turn

Each run is a child process with that tree first on its path: N whole nodes (`App`s, over TCP
on 127.0.0.1, the tree's own `tests.support.fleet`) join through the first, then run
`get_closest_peers` for random keys from random nodes, `--concurrency` at a time. Throughput is
requests (FIND_NODE round trips) per wall second, cost is CPU milliseconds per request (this
process does both ends of every request; its garbage collector is set as `serve` sets its own,
`cli.serve.tune_collector`, where the tree has it); per lookup they vary with each run's fresh tables.
Trees run alternately, `--rounds` times each, so drift in the machine's load falls on both; the
medians are compared.

Runs differ by more than accounting costs (fresh identities, tables and lookup lengths: seen
+-30 % between runs of one tree). `--accounting-blocks N` takes that away: one network of the
tree at hand runs 2N blocks of `--lookups`, with and without accounting in the order
with, without, without, with, ... (drift falls on both), and compares each pair of blocks.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import resource
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


ACCOUNTED = (
    ("shardroute.net.resources", "ResourceManager", "open_stream"),
    ("shardroute.net.resources", "ResourceManager", "serve_protocol"),
    ("shardroute.net.resources", "ResourceManager", "grow_memory"),
    ("shardroute.net.resources", "ResourceManager", "shrink_memory"),
    ("shardroute.kad.fairness", "RequestLimiter", "allow"),
)


def accounted_methods() -> Iterator[tuple[type, str, Any]]:
    """(class, method name, the method as the node defines it) for each of ACCOUNTED."""
    import importlib

    for module, cls_name, name in ACCOUNTED:
        cls = getattr(importlib.import_module(module), cls_name)
        yield cls, name, _ORIGINALS.setdefault(f"{cls_name}.{name}", cls.__dict__[name])


_ORIGINALS: dict[str, Any] = {}  # filled on first use, before any patch


def set_accounting(on: bool) -> None:
    """What resource accounting costs, measured by taking it away: off, stream and memory
    budgets and the kad rate limits always grant (a benchmark's patch; the node has no such
    switch). Memory grown while on and shrunk while off stays counted: a few frames per turn."""
    from shardroute.net.resources import Reservation

    def granted(*args: object, **kwargs: object) -> Reservation:
        return Reservation(None)

    off = {
        "open_stream": granted,
        "serve_protocol": granted,
        "grow_memory": lambda self, peer, n: True,
        "shrink_memory": lambda self, peer, n: None,
        "allow": lambda self, peer, kind: True,
    }
    for cls, name, original in accounted_methods():
        setattr(cls, name, original if on else off[name])


@contextmanager
def timed_accounting() -> Iterator[dict[str, list[int]]]:
    """Every accounting call timed (perf_counter_ns) while inside, by method name."""
    spent: dict[str, list[int]] = {}
    for cls, name, original in accounted_methods():
        times = spent.setdefault(name, [])

        def timed(*args: Any, _original: Any = original, _times: Any = times, **kw: Any) -> Any:
            started = time.perf_counter_ns()
            try:
                return _original(*args, **kw)
            finally:
                _times.append(time.perf_counter_ns() - started)

        setattr(cls, name, timed)
    try:
        yield spent
    finally:
        set_accounting(True)


async def worker(
    nodes: int, lookups: int, concurrency: int, seed: int, blocks: int = 0
) -> dict[str, Any]:
    """One network, one block of lookups; or with `blocks`, 2 x blocks of them, accounting on
    and off in turn (ABBA), each block's figures under "blocks"."""
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
        try:  # the collector as `serve` sets it, in trees that set it
            from shardroute.cli.serve import tune_collector
        except ImportError:
            pass
        else:
            tune_collector()

        def refusals() -> dict[str, float]:
            """Work the members refused or failed so far, summed: what accounting may add."""
            totals: dict[str, float] = {}
            for m in members:
                ms = m.app.metrics
                for counter, keep in (
                    (ms.resource_refusals_total, lambda labels: True),
                    (ms.dht_requests_received_total, lambda labels: labels["result"] != "ok"),
                    (ms.dht_requests_sent_total, lambda labels: labels["result"] != "ok"),
                    (ms.kad_streams_total, lambda labels: True),
                ):
                    for metric in counter.collect():
                        for sample in metric.samples:
                            if (
                                sample.name.endswith("_total")
                                and sample.value
                                and keep(sample.labels)
                            ):
                                key = sample.name + str(sorted(sample.labels.values()))
                                totals[key] = totals.get(key, 0) + sample.value
            return totals

        gc_spent = [0.0, 0.0]  # seconds in the collector so far; when the running one began

        def on_gc(phase: str, info: dict[str, int]) -> None:
            if phase == "start":
                gc_spent[1] = time.perf_counter()
            else:
                gc_spent[0] += time.perf_counter() - gc_spent[1]

        gc.callbacks.append(on_gc)

        def new_work() -> tuple[list[bytes], list[Any]]:
            """Random keys, each from a random member."""
            return (
                [rng.randbytes(32) for _ in range(lookups)],
                [rng.choice(members) for _ in range(lookups)],
            )

        async def block(work: tuple[list[bytes], list[Any]]) -> dict[str, Any]:
            keys, origins = work
            limiter = anyio.CapacityLimiter(concurrency)
            answered = requests = 0

            async def one(i: int) -> None:
                nonlocal answered, requests
                async with limiter:
                    report = await origins[i].app.dht.get_closest_peers(keys[i])
                    answered += len(report.peers) > 0
                    requests += report.requests

            refused = refusals()
            gc_started = gc_spent[0]
            cpu, wall = cpu_seconds(), time.perf_counter()
            async with anyio.create_task_group() as tg:
                for i in range(lookups):
                    tg.start_soon(one, i)
            wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
            after = refusals()
            return {
                "lookups_per_s": lookups / wall,
                "cpu_ms_per_lookup": 1000 * cpu / lookups,
                "requests_per_s": requests / wall,
                "cpu_ms_per_request": 1000 * cpu / requests,
                "answered": answered / lookups,
                "requests": requests,
                "gc_s": gc_spent[0] - gc_started,
                "connections": sum(len(m.app.host.connections) for m in members),
                "refused": {
                    k: v - refused.get(k, 0) for k, v in after.items() if v != refused.get(k, 0)
                },
            }

        if not blocks:
            result: dict[str, Any] = await block(new_work())
        else:
            result = {"blocks": []}
            # Warm-up (the caches fill; the first pair would not be alike), timing every
            # accounting call as it goes: an upper bound (timer included) that no drift blurs.
            with timed_accounting() as spent:
                warm = await block(new_work())
            result["timed"] = {
                "calls_per_request": sum(map(len, spent.values())) / warm["requests"],
                "us_per_request": sum(map(sum, spent.values())) / 1000 / warm["requests"],
                "median_us": {
                    name: statistics.median(ns) / 1000 for name, ns in spent.items() if ns
                },
                "cpu_us_per_request": 1000 * warm["cpu_ms_per_request"],
            }
            for i in range(2 * blocks):
                on = i % 4 in (0, 3)
                if i % 2 == 0:
                    # The two blocks of a pair do the same lookups, so lookup lengths (which
                    # differ by tens of percent between sets of keys) cancel out.
                    work = new_work()
                set_accounting(on)
                result["blocks"].append({"accounting": on, **await block(work)})
            set_accounting(True)
        await crew.close()
    return result


def report_blocks(
    args: argparse.Namespace, blocks: list[dict[str, Any]], timed: dict[str, Any]
) -> str:
    """The interleaved run as a docs/benchmarks.md section: each pair of blocks compared."""
    from bench.common import commit_of

    with_ = [b for b in blocks if b["accounting"]]
    without = [b for b in blocks if not b["accounting"]]
    gains = [
        b["requests_per_s"] / a["requests_per_s"] - 1 for a, b in zip(with_, without, strict=True)
    ]
    cpu = [
        1 - b["cpu_ms_per_request"] / a["cpu_ms_per_request"]
        for a, b in zip(with_, without, strict=True)
    ]
    rows = [
        f"| {i + 1} | {a['requests_per_s']:.0f} | {b['requests_per_s']:.0f} | {100 * g:+.1f} % "
        f"| {a['cpu_ms_per_request']:.3f} | {b['cpu_ms_per_request']:.3f} | {100 * c:+.1f} % |"
        for i, (a, b, g, c) in enumerate(zip(with_, without, gains, cpu, strict=True))
    ]
    total = sum(b["requests_per_s"] for b in without) / sum(a["requests_per_s"] for a in with_)
    return (
        f"Script: `bench/bench_lookups.py --accounting-blocks {args.accounting_blocks}`. One "
        f"network of {args.nodes} nodes in one process over TCP on 127.0.0.1 (tree "
        f"{commit_of(ROOT)}); {2 * args.accounting_blocks} blocks of {args.lookups} "
        f"`get_closest_peers` lookups, {args.concurrency} at a time, with and without "
        "accounting in the order with, without, without, with, ..., after a warm-up block; without, the stream and "
        "memory budgets and the kad rate limits always grant. Pair i is the i-th block with "
        "and the i-th without.\n\n"
        "| pair | requests/s with | without | throughput gain without | CPU ms/request with "
        "| without | CPU saved without |\n|---|---|---|---|---|---|---|\n"
        + "\n".join(rows)
        + f"\n\nMedian gain in throughput without accounting: "
        f"{100 * statistics.median(gains):+.1f} % (all blocks: {100 * (total - 1):+.1f} %); "
        f"median CPU per request saved: {100 * statistics.median(cpu):+.1f} %; answered: "
        f"{min(b['answered'] for b in blocks):.0%} in the worst block.\n\n"
        f"Timed in the warm-up block: {timed['calls_per_request']:.1f} accounting calls per "
        f"request took {timed['us_per_request']:.1f} us of the "
        f"{timed['cpu_us_per_request']:.0f} us of CPU a request costs "
        f"({100 * timed['us_per_request'] / timed['cpu_us_per_request']:.1f} %, the timer "
        "included). Per call, medians in place: "
        + ", ".join(f"`{name}` {us:.1f} us" for name, us in timed["median_us"].items())
        + ".\n"
    )


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
    p.add_argument(
        "--accounting-blocks",
        type=int,
        default=0,
        metavar="N",
        help="one network of this tree, N blocks with accounting and N without, in turn",
    )
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--no-accounting", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--write", default="", help="write the table as this docs/benchmarks.md section")
    p.add_argument("--note", default="", help="a paragraph for the section")
    args = p.parse_args(argv)
    if args.worker:
        import anyio

        if args.no_accounting:
            set_accounting(False)
        result = anyio.run(
            worker, args.nodes, args.lookups, args.concurrency, args.seed, args.accounting_blocks
        )
        print(json.dumps(result))
        return
    sys.path.insert(0, str(ROOT))
    if args.accounting_blocks:
        from bench.common import run_in_tree, write_section

        result = run_in_tree(
            Path(__file__).resolve(),
            ROOT,
            [
                f"--{k.replace('_', '-')}={getattr(args, k)}"
                for k in ("nodes", "lookups", "concurrency", "seed", "accounting_blocks")
            ],
            timeout=3600,
        )
        blocks: list[dict[str, Any]] = result["blocks"]  # type: ignore[assignment]
        for block in blocks:
            print(json.dumps(block), flush=True)
        body = report_blocks(args, blocks, result["timed"])  # type: ignore[arg-type]
        if args.note:
            body += f"\n{args.note}\n"
        print(body)
        if args.write:
            write_section(args.write, body)
        return
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
