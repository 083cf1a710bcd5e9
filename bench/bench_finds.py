"""What one find costs the whole network: bench_network's networks, then finds one at a time from
a single node, for shardroute and go in one invocation.

    .venv/bin/python bench/bench_finds.py [--nodes 32] [--provides 480] [--impls shardroute,go]
        [--rounds 1]

Per implementation and round: N node processes joined as in bench_network.py, the provides of
its plan (4 in flight), then a find (count 1) of every CID the finder did not provide itself,
one after another from node 1, so no find waits for a core another find holds. About two
thirds are local hits (the record is stored on 20 of 32 nodes) and the rest one-round lookups.
Reported: find latency p10/p50/p90 and the CPU (utime+stime from /proc) per find of the finder
and of all nodes (idle upkeep included). A/B comparisons of source trees run this from each.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_network import parse
from bench.netnodes import cpu_seconds
from bench.netplan import make_plan, pct, run_ops
from bench.netrun import Network, log, op_calls
from tests.interop.thirdparty import require

FINDER = 1


def one_network(
    impl: str, args: argparse.Namespace, root: Path
) -> tuple[list[float], float, float]:
    """Latencies (ms) of the finder's finds, its CPU and all nodes' CPU over them (s)."""
    plan = make_plan(args.nodes, args.provides, args.finds, args.seed)
    if impl != "shardroute":
        require(impl)  # type: ignore[arg-type]
    net = Network(impl, Path(tempfile.mkdtemp(prefix=f"{impl}-", dir=root)))
    try:
        net.build(args)
        time.sleep(args.settle)
        provides, _ = op_calls(net, plan, args)
        done = run_ops(provides, args.concurrency, args.phase_budget)
        if not all(o.ok for o in done):
            raise SystemExit(f"{impl}: {sum(not o.ok for o in done)} provides failed")
        finder = net.nodes[FINDER]
        cids = [c for c, p in zip(plan.cids, plan.providers, strict=True) if p != FINDER]
        pids = [n.pid for n in net.nodes]
        before = cpu_seconds(pids)
        latencies = []
        for cid in cids:
            started = time.perf_counter()
            if not finder.find(cid, args.op_timeout):  # type: ignore[attr-defined]
                raise SystemExit(f"{impl}: no provider found for {cid}")
            latencies.append((time.perf_counter() - started) * 1000)
        after = cpu_seconds(pids)
        own = after[finder.pid] - before[finder.pid]
        return latencies, own, sum(after[p] - before[p] for p in pids)
    finally:
        net.close()


def main(argv: list[str]) -> int:
    args = parse(["--provides", "480", "--impls", "shardroute,go", *argv])
    root = Path(tempfile.mkdtemp(prefix="shardroute-bench-finds-"))
    rows = []
    try:
        for r in range(args.rounds):
            for impl in args.impls:
                log(f"round {r + 1}: {impl}")
                ms, own, total = one_network(impl, args, root)
                rows.append((r + 1, impl, ms, own, total))
    finally:
        shutil.rmtree(root, ignore_errors=True)  # 32 data dirs and logs per network
    print(
        "| round | impl | finds | p10 ms | p50 ms | p90 ms | finder CPU ms/find | all nodes CPU ms/find |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r, impl, ms, own, total in rows:
        n = len(ms)
        print(
            f"| {r} | {impl} | {n} | {pct(ms, 0.1):.2f} | {pct(ms, 0.5):.2f}"
            f" | {pct(ms, 0.9):.2f} | {own * 1000 / n:.2f} | {total * 1000 / n:.2f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
