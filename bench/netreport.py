"""What bench_network.py reports: one implementation's measurements, their tables and ratios,
and the docs/benchmarks.md section."""

from __future__ import annotations

import argparse
import collections
import dataclasses
import datetime as dt
import re
import shlex
import statistics
import subprocess
from pathlib import Path

from bench.netnodes import CLOCK_TICK, REDIAL_AFTER, ROOT
from bench.netplan import Outcome, pct

SECTION = "Network of node processes (issue 16)"
DOC = ROOT / "docs" / "benchmarks.md"


# -- results ---------------------------------------------------------------------------------------


@dataclasses.dataclass
class Result:
    impl: str
    nodes: int
    join_wall: float  # spawning the first non-bootstrap node to the last one joined
    join_node_p50: float  # per node: spawned to joined
    join_node_max: float
    provides: list[Outcome]
    finds: list[Outcome]
    provide_wall: float
    find_wall: float
    cpu_provide: float
    cpu_find: float
    rss_max: float
    rss_median: float
    redials: int  # go/js: joins that hung up on the seed and dialed again
    rounds: int = 1  # pooled rounds: the CPU fields are their sums

    def ok_ms(self, outcomes: list[Outcome]) -> list[float]:
        return [o.seconds * 1000 for o in outcomes if o.ok]

    @property
    def cpu_work(self) -> float:
        """Per round."""
        return (self.cpu_provide + self.cpu_find) / self.rounds

    def figures(self) -> dict[str, float]:
        p, f = self.ok_ms(self.provides), self.ok_ms(self.finds)
        return {
            "provide p50 ms": pct(p, 0.5),
            "provide p95 ms": pct(p, 0.95),
            "find p50 ms": pct(f, 0.5),
            "find p95 ms": pct(f, 0.95),
            "CPU s (work)": self.cpu_work,
            "CPU ms / provide": self.cpu_provide / len(self.provides) * 1000,
            "CPU ms / find": self.cpu_find / len(self.finds) * 1000 if self.finds else 0.0,
            "peak RSS max MiB": self.rss_max,
            "peak RSS median MiB": self.rss_median,
            "join s (all)": self.join_wall,
            "join s (node p50)": self.join_node_p50,
        }


def fmt(x: float) -> str:
    if x != x:  # NaN
        return "n/a"
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.1f}" if abs(x) >= 10 else f"{x:.2f}"


def stored_on(r: Result) -> str:
    counts = [o.stored_on for o in r.provides if o.ok and o.stored_on is not None]
    return f"{statistics.median(counts):g}" if counts else "n/a"


def table(results: list[Result]) -> str:
    names = [r.impl for r in results]
    rows = [
        "| | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    figs = [r.figures() for r in results]
    rows.append(
        "| provides ok | "
        + " | ".join(f"{sum(o.ok for o in r.provides)}/{len(r.provides)}" for r in results)
        + " |"
    )
    rows.append(
        "| finds ok | "
        + " | ".join(f"{sum(o.ok for o in r.finds)}/{len(r.finds)}" for r in results)
        + " |"
    )
    for key in figs[0]:
        rows.append(f"| {key} | " + " | ".join(fmt(f[key]) for f in figs) + " |")
    rows.append(
        "| provide stored on, median peers | " + " | ".join(stored_on(r) for r in results) + " |"
    )
    rows.append("| join redials | " + " | ".join(str(r.redials) for r in results) + " |")
    rows.append(
        "| provide / find phase wall s | "
        + " | ".join(f"{r.provide_wall:.1f} / {r.find_wall:.1f}" for r in results)
        + " |"
    )
    return "\n".join(rows)


def ratios(results: list[Result]) -> str:
    go = next((r for r in results if r.impl == "go"), None)
    if go is None:
        return "(no go run: no ratios)"
    others = [r for r in results if r.impl != "go"]
    if not others:
        return "(only go ran: no ratios)"
    base = go.figures()
    rows = [
        "| ratio to go | " + " | ".join(r.impl for r in others) + " |",
        "|---|" + "---|" * len(others),
    ]
    for key in base:
        cells = []
        for r in others:
            mine = r.figures()[key]
            cells.append(
                "n/a" if not base[key] or base[key] != base[key] else f"{mine / base[key]:.2f}x"
            )
        rows.append(f"| {key} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def pooled(rounds: list[Result]) -> Result:
    """One implementation's rounds as one result: every operation's latency in the pool, CPU
    per round and per operation, walls and joins the mean of the rounds, peak RSS the highest
    and the median of medians."""
    if len(rounds) == 1:
        return rounds[0]
    return Result(
        impl=rounds[0].impl,
        nodes=rounds[0].nodes,
        join_wall=statistics.mean(r.join_wall for r in rounds),
        join_node_p50=statistics.median(r.join_node_p50 for r in rounds),
        join_node_max=max(r.join_node_max for r in rounds),
        provides=[o for r in rounds for o in r.provides],
        finds=[o for r in rounds for o in r.finds],
        provide_wall=statistics.mean(r.provide_wall for r in rounds),
        find_wall=statistics.mean(r.find_wall for r in rounds),
        cpu_provide=sum(r.cpu_provide for r in rounds),
        cpu_find=sum(r.cpu_find for r in rounds),
        rss_max=max(r.rss_max for r in rounds),
        rss_median=statistics.median(r.rss_median for r in rounds),
        redials=sum(r.redials for r in rounds),
        rounds=len(rounds),
    )


def round_ratios(rounds: list[list[Result]]) -> str:
    """Each round's ratios to that round's go, and their median and range."""
    if len(rounds) < 2 or not any(r.impl == "go" for r in rounds[0]):
        return ""
    others = [r.impl for r in rounds[0] if r.impl != "go"]
    keys = ("provide p50 ms", "provide p95 ms", "find p50 ms", "find p95 ms", "CPU s (work)")
    rows = [
        "| ratio to go, per round | "
        + " | ".join(f"round {i + 1}" for i in range(len(rounds)))
        + " | median | range |",
        "|---|" + "---|" * (len(rounds) + 2),
    ]
    for impl in others:
        for key in keys:
            values = []
            for results in rounds:
                go = next(r for r in results if r.impl == "go").figures()[key]
                mine = next(r for r in results if r.impl == impl).figures()[key]
                values.append(mine / go if go else float("nan"))
            rows.append(
                f"| {impl} {key} | "
                + " | ".join(f"{v:.2f}x" for v in values)
                + f" | {statistics.median(values):.2f}x | {min(values):.2f}x to {max(values):.2f}x |"
            )
    return "\n".join(rows)


def failures(results: list[Result]) -> str:
    lines = []
    for r in results:
        for phase, outcomes in (("provide", r.provides), ("find", r.finds)):
            errors = collections.Counter(o.error[:160] for o in outcomes if not o.ok)
            for error, n in errors.most_common(4):
                lines.append(f"- {r.impl} {phase}: {n} x {error}")
    return "\n".join(lines)


# -- output ---------------------------------------------------------------------------------------


def machine() -> tuple[str, str]:
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        text = ""
    model = re.search(r"^Model name:\s*(.+)$", text, re.M)
    cpus = re.search(r"^CPU\(s\):\s*(\d+)$", text, re.M)
    return (model[1].strip() if model else "unknown CPU", cpus[1] if cpus else "?")


def commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            cwd=ROOT,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def loadavg() -> str:
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except (OSError, IndexError):
        return "?"


def markdown(
    results: list[Result],
    args: argparse.Namespace,
    profile: str,
    argv: list[str],
    load: str,
    per_round: str = "",
) -> str:
    model, cpus = machine()
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    shown = list(argv)
    if "--note" in shown:  # the note is printed below the command, not in it
        i = shown.index("--note")
        del shown[i : i + 2]
    shown = [a for a in shown if not a.startswith("--note=")]
    command = "python bench/bench_network.py " + shlex.join(shown)
    note = f"\n{args.note}\n" if args.note else ""
    body = f"""## {SECTION}

Measured {stamp} on {model}, {cpus} cores, commit {commit()}: `{command.strip()}`. One-minute
load average {load} at the start and {loadavg()} at the end (everything this run started included).
{note}
`bench/bench_network.py`: per implementation {args.nodes} node processes on 127.0.0.1, the first
the bootstrap peer of the rest; {args.provides} provides spread over all nodes, then
{args.finds} finds of provided CIDs from other nodes (count 1: done at the first
provider), {args.concurrency} operations in flight, never two on one node. The plan (CIDs, which
node provides, which finds) is the same for every implementation. shardroute: `shardroute serve`
processes driven through `shardroute.api.client.Client`, a provide is `announce(wait=True)`
(returns once the publication reached peers); go (go-libp2p-kad-dht v0.42.2) and js (js-libp2p
kad-dht): the interop peers, driven over their JSON-lines control protocol (`provide` waits for
the ADD_PROVIDER sends in both). Latencies are of successful operations; CPU is utime+stime of
all node processes (children included) over the provides and finds only, counted in
{1000 / CLOCK_TICK:.0f} ms ticks per process (so the smallest figures are coarse); peak RSS is each node's
VmHWM; join is from spawning a node to joined (shardroute: health SERVING, i.e. its join lookups
done; go/js: `dial` to the first node, the first node in the routing table, `bootstrap`
returned), {args.concurrency} nodes starting at a time. A go or js peer whose table is still
empty {REDIAL_AFTER:.0f} s after the dial hangs up and dials again ("join redials": js admits
a new contact only if one ping to it answers within its adaptive timeout).

{pooled_line(args.rounds)}{table(results)}

{ratios(results)}
"""
    if per_round:
        body += f"\n{per_round}\n"
    if args.nodes <= 20:
        body += (
            f"\nWith {args.nodes} nodes every node is among a CID's 20 closest: a provide reaches"
            " every node and a find is answered from the finder's own store.\n"
        )
    errs = failures(results)
    if errs:
        body += f"\nFailed operations (most common errors):\n\n{errs}\n"
    if profile:
        body += f"\n### Where a shardroute node's time goes during the provides\n\n{profile}\n"
    return body


def pooled_line(rounds: int) -> str:
    if rounds < 2:
        return ""
    return (
        f"{rounds} rounds, each implementation in turn on a fresh network per round; the table "
        "pools them: latencies over all rounds' operations, CPU, walls and join times the mean "
        "per round, peak RSS the highest (max) and the median of the rounds' medians.\n\n"
    )


def write_doc(section: str) -> None:
    text = DOC.read_text()
    pattern = re.compile(rf"^## {re.escape(SECTION)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section.rstrip("\n") + "\n\n", text)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    DOC.write_text(text.rstrip("\n") + "\n")
