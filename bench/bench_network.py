"""Deployment-shaped benchmark: N node processes on 127.0.0.1, driven the way storage nodes
drive them, for shardroute, go-libp2p-kad-dht and js-libp2p kad-dht in one invocation.

    .venv/bin/python bench/bench_network.py [--nodes 32] [--provides 160] [--finds 50]
        [--concurrency 4] [--impls shardroute,go,js] [--rounds 1] [--markdown] [--write]
        [--profile]

shardroute: N `shardroute serve` processes (own data dir, gRPC port, libp2p port, metrics
off), the first the bootstrap peer of the others; provides are `announce --wait` (the
client's `announce(wait=True)`: it returns once the publication reached peers), finds are
`find_providers(count=1)`, through `shardroute.api.client.Client`. go and js: N interop peers
(tests/interop/peers) each, which dial the first and run `bootstrap`; provides and finds
through their JSON-lines control protocol. Every implementation gets the same plan: the same
CIDs, provided by the same node indices, found from the same other node indices, with the
same number of operations in flight (never two on one node: each node does one at a time,
and an operation's time starts once it has its node).

CPU is utime+stime (children included) of all node processes over the provides and finds
only; peak RSS is each node's VmHWM at the end. `--profile` samples shardroute node 1 (the
first that joins through the bootstrap peer) with py-spy during the provides.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from types import FrameType

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.netnodes import NodeFailure
from bench.netplan import make_plan
from bench.netreport import (
    DOC,
    SECTION,
    Result,
    failures,
    loadavg,
    markdown,
    pooled,
    ratios,
    round_ratios,
    table,
    write_doc,
)
from bench.netrun import log, run_impl

IMPLS = ("shardroute", "go", "js")


# -- main -----------------------------------------------------------------------------------------


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--nodes", type=int, default=32)
    p.add_argument("--provides", type=int, default=160)
    p.add_argument("--finds", type=int, default=50)
    p.add_argument(
        "--concurrency", type=int, default=4, help="operations (and node starts) in flight"
    )
    p.add_argument("--impls", default=",".join(IMPLS), help="comma-separated, run in this order")
    p.add_argument("--seed", type=int, default=16, help="of the plan: CIDs and node choices")
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run every implementation this many times in turn (runs differ by 20 %% and more)",
    )
    p.add_argument("--settle", type=float, default=3.0, help="seconds between joined and the work")
    p.add_argument("--op-timeout", type=float, default=30.0, help="deadline of one provide or find")
    p.add_argument("--start-timeout", type=float, default=60.0, help="spawn to listening, per node")
    p.add_argument("--join-timeout", type=float, default=90.0, help="listening to joined, per node")
    p.add_argument(
        "--phase-budget",
        type=float,
        default=600.0,
        help="seconds for all provides (and again for all finds)",
    )
    p.add_argument("--markdown", action="store_true", help="print the docs/benchmarks.md section")
    p.add_argument(
        "--write", action="store_true", help="write that section into docs/benchmarks.md"
    )
    p.add_argument("--note", default="", help="a line for the section, e.g. the machine was shared")
    p.add_argument(
        "--profile", action="store_true", help="py-spy on shardroute node 1 during the provides"
    )
    p.add_argument(
        "--profile-out", default=None, help="also keep py-spy's raw (collapsed) stacks here"
    )
    p.add_argument("--keep", action="store_true", help="keep the data dirs and logs")
    args = p.parse_args(argv)
    args.impls = [i.strip() for i in args.impls.split(",") if i.strip()]
    unknown = [i for i in args.impls if i not in IMPLS]
    if unknown or not args.impls:
        p.error(f"--impls: unknown {unknown}; choose from {','.join(IMPLS)}")
    if args.concurrency < 1 or args.concurrency > args.nodes:
        p.error("--concurrency must be between 1 and --nodes")
    if args.rounds < 1:
        p.error("--rounds must be at least 1")
    if args.profile and "shardroute" not in args.impls:
        p.error("--profile samples a shardroute node: add shardroute to --impls")
    return args


def main(argv: list[str]) -> int:
    args = parse(argv)
    load = loadavg()  # how busy the machine was before we started anything
    plan = make_plan(args.nodes, args.provides, args.finds, args.seed)

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt  # the same clean-up as Ctrl-C

    # SIGINT too: a shell's background job inherits it ignored, and then Python sets no handler.
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    root = Path(tempfile.mkdtemp(prefix="shardroute-bench-network-"))
    rounds: list[list[Result]] = []
    profile = ""
    try:
        for r in range(args.rounds):
            if args.rounds > 1:
                log(f"round {r + 1} of {args.rounds}")
            rounds.append([])
            (root / f"round-{r + 1}").mkdir()
            for impl in args.impls:
                # A fresh directory per round: each round's networks start from nothing.
                result, prof = run_impl(impl, plan, args, root / f"round-{r + 1}")
                rounds[-1].append(result)
                profile = profile or prof
    except NodeFailure as exc:
        log(f"FAILED: {exc}")
        return 1
    except KeyboardInterrupt:
        log("interrupted: node processes stopped")
        return 130
    finally:
        if args.keep:
            log(f"data dirs and logs kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    results = [pooled([rnd[i] for rnd in rounds]) for i in range(len(args.impls))]
    per_round = round_ratios(rounds)
    print(table(results))
    print()
    print(ratios(results))
    if per_round:
        print("\n" + per_round)
    errs = failures(results)
    if errs:
        print("\nfailed operations:\n" + errs)
    if profile:
        print("\n" + profile)
    if args.markdown or args.write:
        section = markdown(results, args, profile, argv, load, per_round)
        if args.markdown:
            print("\n" + section)
        if args.write:
            write_doc(section)
            log(f"wrote the section '{SECTION}' of {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
