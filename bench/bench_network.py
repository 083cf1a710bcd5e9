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
import collections
import concurrent.futures as cf
import dataclasses
import datetime as dt
import functools
import math
import random
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Protocol

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.netnodes import (
    CLOCK_TICK,
    REDIAL_AFTER,
    ROOT,
    ControlPeer,
    NodeFailure,
    NodeProcess,
    ServeNode,
    cpu_seconds,
    peak_rss_mib,
)
from shardroute.content import ContentId
from tests.interop.thirdparty import command_line, require

IMPLS = ("shardroute", "go", "js")
SECTION = "Network of node processes (issue 16)"
DOC = ROOT / "docs" / "benchmarks.md"


Call = Callable[[], "int | None"]  # an operation; a provide may say how many peers took it


class Node(Protocol):
    name: str
    peer_id: str
    lock: threading.Lock
    spawned: float
    ready_at: float | None
    joined_at: float | None

    @property
    def pid(self) -> int: ...

    def check_alive(self) -> None: ...


# -- the plan -------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Plan:
    cids: list[str]
    providers: list[int]  # node index that provides cids[i]
    finds: list[tuple[int, int]]  # (cid index, finder node index)


def make_plan(nodes: int, provides: int, finds: int, seed: int) -> Plan:
    if nodes < 2:
        raise SystemExit("--nodes must be at least 2 (finds come from another node)")
    if finds > provides:
        raise SystemExit("--finds cannot exceed --provides (each find looks up a provided CID)")
    rng = random.Random(seed)
    cids = [str(ContentId.from_shard_hash(rng.randbytes(32))) for _ in range(provides)]
    providers = [i % nodes for i in range(provides)]  # spread evenly, the bootstrap peer too
    found = []
    for i in rng.sample(range(provides), finds):
        finder = rng.choice([n for n in range(nodes) if n != providers[i]])
        found.append((i, finder))
    return Plan(cids, providers, found)


# -- running operations ---------------------------------------------------------------------------


@dataclasses.dataclass
class Outcome:
    ok: bool
    seconds: float
    error: str = ""
    stored_on: int | None = None  # shardroute's provides: peers that took the record


def run_ops(ops: Sequence[tuple[Node, Call]], concurrency: int, budget: float) -> list[Outcome]:
    """Each op on its node, `concurrency` at a time; timed from when it holds its node. Ops not
    started within `budget` seconds of the phase start fail as skipped."""
    deadline = time.monotonic() + budget

    def one(node: Node, call: Call) -> Outcome:
        if not node.lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            return Outcome(False, 0.0, "skipped: phase budget spent waiting for the node")
        try:
            if time.monotonic() > deadline:
                return Outcome(False, 0.0, "skipped: phase budget spent")
            t0 = time.perf_counter()
            try:
                stored_on = call()
            except Exception as exc:  # an operation's failure is a result, not a crash
                return Outcome(False, time.perf_counter() - t0, f"{type(exc).__name__}: {exc}")
            return Outcome(True, time.perf_counter() - t0, stored_on=stored_on)
        finally:
            node.lock.release()

    pool = cf.ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="op")
    try:
        futures = [pool.submit(one, node, call) for node, call in ops]
        return [f.result() for f in futures]
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def pct(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


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


# -- one implementation ----------------------------------------------------------------------------


class Network:
    """The node processes of one implementation; `close()` stops all of them."""

    def __init__(self, impl: str, workdir: Path) -> None:
        self.impl = impl
        self.workdir = workdir
        self.nodes: list[NodeProcess] = []
        self._lock = threading.Lock()
        self._closed = False

    def close(self) -> None:
        with self._lock:
            self._closed = True  # a start still under way in a worker thread spawns nothing more
        # In parallel: 32 SIGTERM grace periods one after another would take minutes.
        threads = [threading.Thread(target=n.stop) for n in self.nodes]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=15)

    def spawn(self, index: int, seed_addr: str | None, args: argparse.Namespace) -> NodeProcess:
        name = f"{self.impl}-{index}"
        node: NodeProcess
        with self._lock:
            if self._closed:
                raise NodeFailure(f"{name}: not started, the network is being stopped")
            if self.impl == "shardroute":
                data = self.workdir / name
                data.mkdir()
                node = ServeNode(name, data, seed_addr, args.op_timeout)
            else:
                log_path = self.workdir / f"{name}.log"
                node = ControlPeer(name, command_line(self.impl), log_path)  # type: ignore[arg-type]
            self.nodes.append(node)
        return node

    def start_and_join(self, index: int, seed_addr: str | None, args: argparse.Namespace) -> None:
        node = self.spawn(index, seed_addr, args)
        if isinstance(node, ServeNode):
            node.wait_ready(args.start_timeout)
            node.wait_joined(args.join_timeout)
        else:
            assert isinstance(node, ControlPeer)
            node.wait_ready(args.start_timeout)
            if seed_addr is None:
                node.joined_at = node.ready_at
            else:
                try:
                    node.join(seed_addr, args.join_timeout)
                except RuntimeError as exc:
                    raise node.failure(f"join: {exc}") from None

    def build(self, args: argparse.Namespace) -> tuple[float, list[float]]:
        """Start the bootstrap node, then the rest (`concurrency` at a time) through it.
        Returns the join phase's wall time and each joining node's spawn-to-joined time."""
        self.start_and_join(0, None, args)
        seed = self.nodes[0]
        seed_addr = seed.addr  # type: ignore[attr-defined]
        t0 = time.monotonic()
        # Not `with`: its exit would wait for starts still under way (after Ctrl-C too).
        pool = cf.ThreadPoolExecutor(max_workers=args.concurrency, thread_name_prefix="start")
        futures = [
            pool.submit(self.start_and_join, i, seed_addr, args) for i in range(1, args.nodes)
        ]
        budget = (args.start_timeout + args.join_timeout) * args.nodes
        try:
            for f in cf.as_completed(futures, timeout=budget):
                f.result()  # the first failure, with its node's log, ends the run
        except cf.TimeoutError:
            raise NodeFailure(f"{self.impl}: the join phase took over {budget:.0f} s") from None
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
        wall = time.monotonic() - t0
        per_node = [(n.joined_at or 0) - n.spawned for n in self.nodes[1:]]
        return wall, per_node


def op_calls(
    net: Network, plan: Plan, args: argparse.Namespace
) -> tuple[list[tuple[Node, Call]], list[tuple[Node, Call]]]:
    nodes = net.nodes
    timeout = args.op_timeout

    def provide(node: NodeProcess, cid: str) -> Call:
        if isinstance(node, ServeNode):
            return lambda: node.provide(cid)
        assert isinstance(node, ControlPeer)

        def call() -> None:
            node.provide(cid, timeout)

        return call

    def find(node: NodeProcess, cid: str, want: str) -> Call:
        def call() -> None:
            if isinstance(node, ServeNode):
                found = node.find(cid, timeout)
            else:
                assert isinstance(node, ControlPeer)
                found = node.find(cid, timeout)
            if want not in found:
                raise LookupError(f"providers {found or 'none'}, not {want[:16]}…")

        return call

    provides = [
        (nodes[p], provide(nodes[p], cid)) for cid, p in zip(plan.cids, plan.providers, strict=True)
    ]
    finds = [
        (nodes[f], find(nodes[f], plan.cids[i], nodes[plan.providers[i]].peer_id))  # type: ignore[attr-defined]
        for i, f in plan.finds
    ]
    return provides, finds  # type: ignore[return-value]


def work_cpu(pids: list[int], before: dict[int, float]) -> float:
    after = cpu_seconds(pids)
    missing = [p for p in pids if p not in after]
    if missing:
        raise NodeFailure(f"node processes {missing} are gone: their CPU time cannot be counted")
    return sum(after[p] - before[p] for p in pids)


def run_impl(impl: str, plan: Plan, args: argparse.Namespace, root: Path) -> tuple[Result, str]:
    """Build the network, run the plan, measure; returns the result and the profile (if any)."""
    if impl != "shardroute":
        require(impl)  # type: ignore[arg-type]
    workdir = Path(tempfile.mkdtemp(prefix=f"{impl}-", dir=root))
    net = Network(impl, workdir)
    profile = ""
    try:
        log(f"{impl}: starting {args.nodes} nodes")
        join_wall, per_node = net.build(args)
        log(f"{impl}: joined in {join_wall:.1f} s; settling {args.settle:.0f} s")
        time.sleep(args.settle)
        for n in net.nodes:
            n.check_alive()
        provides, finds = op_calls(net, plan, args)
        pids = [n.pid for n in net.nodes]
        spy = (
            start_profile(net.nodes[1], workdir) if args.profile and impl == "shardroute" else None
        )

        cpu0 = cpu_seconds(pids)
        t0 = time.monotonic()
        provided = run_ops(provides, args.concurrency, args.phase_budget)
        provide_wall = time.monotonic() - t0
        cpu_provide = work_cpu(pids, cpu0)
        if spy is not None:
            node1 = net.nodes[1].pid
            node1_cpu = cpu_seconds([node1])[node1] - cpu0[node1]
            profile = stop_profile(spy, net.nodes[1], workdir, args.profile_out, node1_cpu)
        log(
            f"{impl}: {sum(o.ok for o in provided)}/{len(provided)} provides in {provide_wall:.1f} s"
        )

        cpu1 = cpu_seconds(pids)
        t0 = time.monotonic()
        found = run_ops(finds, args.concurrency, args.phase_budget)
        find_wall = time.monotonic() - t0
        cpu_find = work_cpu(pids, cpu1)
        log(f"{impl}: {sum(o.ok for o in found)}/{len(found)} finds in {find_wall:.1f} s")

        for n in net.nodes:
            n.check_alive()
        rss = [peak_rss_mib(p) for p in pids]
        return (
            Result(
                impl,
                args.nodes,
                join_wall,
                statistics.median(per_node),
                max(per_node),
                provided,
                found,
                provide_wall,
                find_wall,
                cpu_provide,
                cpu_find,
                max(rss),
                statistics.median(rss),
                sum(n.redials for n in net.nodes if isinstance(n, ControlPeer)),
            ),
            profile,
        )
    finally:
        net.close()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


# -- profile --------------------------------------------------------------------------------------


def start_profile(node: NodeProcess, workdir: Path) -> subprocess.Popen[bytes]:
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if spy is None:
        raise SystemExit("--profile needs py-spy: .venv/bin/pip install py-spy")
    raw = workdir / "profile.raw"
    log(f"profiling {node.name} (pid {node.pid}) with py-spy")
    proc = subprocess.Popen(
        [spy, "record", "--pid", str(node.pid), "--rate", str(PROFILE_RATE), *RAW, str(raw)],
        stdout=subprocess.DEVNULL,
        stderr=(workdir / "py-spy.log").open("wb"),
        start_new_session=True,
    )
    time.sleep(1.0)  # attached before the first provide
    if proc.poll() is not None:
        raise SystemExit(
            f"py-spy could not attach (exit {proc.returncode}; it needs root or ptrace rights):\n"
            + (workdir / "py-spy.log").read_text(errors="replace")[-2000:]
        )
    return proc


def stop_profile(
    proc: subprocess.Popen[bytes],
    node: NodeProcess,
    workdir: Path,
    out: str | None,
    cpu_s: float,
) -> str:
    proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise NodeFailure("py-spy did not finish writing its profile within 60 s") from None
    raw = workdir / "profile.raw"
    if not raw.exists():
        raise NodeFailure(
            "py-spy wrote no profile:\n" + (workdir / "py-spy.log").read_text(errors="replace")
        )
    if out:
        shutil.copy(raw, out)
        log(f"raw py-spy stacks (collapsed) in {out}")
    return summarize_profile(raw.read_text(), node.name, cpu_s)


# Samples per second. py-spy pauses the node for each (its idle detection needs that, and
# --nonblocking counted the event loop's epoll wait and aiosqlite's queue wait as busy).
PROFILE_RATE = 100
RAW = ("--format", "raw", "--output")  # collapsed stacks, one line per stack: "f (file:line);... n"

# A frame's category: the innermost frame that matches one decides a sample's.
CATEGORIES: list[tuple[str, Callable[[str, str], bool]]] = [
    (
        "thread hand-offs (self-pipe wake-ups: aiosqlite results)",
        lambda fn, f: fn in ("_write_to_self", "_read_from_self", "call_soon_threadsafe"),
    ),
    (
        "socket writes (asyncio transport write/send)",
        lambda fn, f: (
            (
                f.endswith("selector_events.py")
                and fn.startswith(("write", "_write", "_sock_send"))
                and not fn.endswith("_self")  # the self-pipe: a hand-off, counted above
            )
            or (f.endswith("socket.py") and fn.startswith("send"))
        ),
    ),
    (
        "socket reads (asyncio transport read)",
        lambda fn, f: (
            f.endswith("selector_events.py") and fn.startswith(("_read", "recv", "_sock_recv"))
        ),
    ),
    ("Noise encrypt/decrypt", lambda fn, f: "protocol/noise" in f or "cryptography" in f),
    ("Yamux framing", lambda fn, f: "protocol/yamux" in f),
    ("multistream-select", lambda fn, f: "multistream" in f or "net/negotiate" in f),
    ("protobuf encode/decode", lambda fn, f: "protobuf" in f or "_pb2" in f),
    ("SQLAlchemy (Core statements, its asyncio adapter)", lambda fn, f: "sqlalchemy" in f),
    (
        "aiosqlite / SQLite store",
        lambda fn, f: "aiosqlite" in f or "sqlite3" in f or "shardroute/store" in f,
    ),
    ("gRPC (the API)", lambda fn, f: "grpc" in f),
    ("identify", lambda fn, f: "identify" in f),
    ("logging", lambda fn, f: "logging/" in f),
    ("Kademlia (shardroute/kad)", lambda fn, f: "shardroute/kad" in f),
    ("connections, dialer, peerstore (shardroute/net)", lambda fn, f: "shardroute/net" in f),
    ("publisher (shardroute/maintenance)", lambda fn, f: "shardroute/maintenance" in f),
    ("other shardroute", lambda fn, f: "shardroute/" in f),
    ("anyio (streams, task groups, cancel scopes)", lambda fn, f: "anyio/" in f),
    ("asyncio event loop", lambda fn, f: "asyncio/" in f),
]
# Categories whose frames sit under others' too (a store write under a Kademlia handler):
# worth a share of every stack they appear in. The rest are layers everything runs on.
MEASURED = {
    c
    for c, _ in CATEGORIES
    if not c.startswith(("asyncio", "anyio", "other", "connections", "Kademlia", "publisher"))
}
ROOTS = re.compile(r"shardroute/(cli/|__main__\.py)")
FRAME = re.compile(r"^(?P<fn>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
# py-spy's idle detection did not work here (busy and waiting threads alike were sampled), so a
# sample whose innermost frame sits on a blocking call is counted as waiting: the event loop's
# epoll, a worker thread's queue get, a lock or condition wait, a thread whose target is C.
WAIT_LINE = re.compile(r"\.(get|poll|select|wait|acquire)\(|self\._target\(|\bwait\(")


def method(fn: str) -> str:
    return fn.rsplit(".", 1)[-1]  # py-spy names methods Class.name


@functools.cache
def source_line(file: str, line: int) -> str:
    """The text of `file` (as py-spy shortens it: relative to a sys.path entry) at `line`."""
    for base in sys.path:
        path = Path(base or ".") / file
        if path.is_file():
            lines = path.read_text(errors="replace").splitlines()
            return lines[line - 1] if 0 < line <= len(lines) else ""
    return ""


def frames(stack: str) -> list[tuple[str, str, int]]:
    out = []
    for part in stack.split(";"):
        m = FRAME.match(part.strip())
        out.append((m["fn"], m["file"], int(m["line"] or 0)) if m else (part.strip(), "", 0))
    return out


def summarize_profile(raw: str, name: str, cpu_s: float | None = None) -> str:
    samples = waits = 0
    by_category: collections.Counter[str] = collections.Counter()
    by_leaf: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    anywhere: collections.Counter[str] = collections.Counter()
    for text in raw.splitlines():
        stack, _, count = text.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        fs = frames(stack)
        fn, f, line = fs[-1]
        if WAIT_LINE.search(source_line(f, line)):
            waits += n
            continue
        samples += n
        by_leaf[f"{fn} ({f})"] += n
        # Entry points (cli, __main__) hold every sample: left out.
        for key in {f"{fn} ({f})" for fn, f, _ in fs if "shardroute/" in f and not ROOTS.search(f)}:
            inclusive[key] += n
        for c in {c for c, test in CATEGORIES for fn, f, _ in fs if test(method(fn), f)}:
            anywhere[c] += n
        for fn, f, _ in reversed(fs):
            cat = next((c for c, test in CATEGORIES if test(method(fn), f)), None)
            if cat:
                by_category[cat] += n
                break
        else:
            by_category["other (interpreter, stdlib)"] += n
    if not samples:
        return f"py-spy recorded no busy samples of {name}."

    def share(n: int) -> str:
        return f"{100 * n / samples:.1f} %"

    lines = [
        f"py-spy at {PROFILE_RATE} Hz on {name} over the provides: {samples:,} busy samples, "
        f"{waits:,} more on a blocking wait (left out). Shares are of the busy samples"
        + (
            f": {samples / PROFILE_RATE:.1f} s of thread time, against {cpu_s:.1f} s of CPU"
            " time of the node over the phase (a thread waiting for the GIL samples as busy,"
            " so the shares say where threads are rather than exact CPU)."
            if cpu_s is not None
            else "."
        ),
        "",
        "Where the samples are, by the innermost frame that belongs to a category:",
        "",
        "| category | share (innermost) | share (anywhere in the stack) |",
        "|---|---|---|",
        *(
            f"| {c} | {share(n)} | {share(anywhere[c]) if c in MEASURED else ''} |"
            for c, n in by_category.most_common()
        ),
        "",
        "Top functions by own time (the sampled innermost Python frame; C calls show as their caller):",
        "",
        "| function | share |",
        "|---|---|",
        *(f"| `{k}` | {share(n)} |" for k, n in by_leaf.most_common(15)),
        "",
        "Top shardroute functions by inclusive time:",
        "",
        "| function | share |",
        "|---|---|",
        *(f"| `{k}` | {share(n)} |" for k, n in inclusive.most_common(15)),
    ]
    return "\n".join(lines)


# -- output ---------------------------------------------------------------------------------------


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


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
the bootstrap peer of the rest; {len(results[0].provides)} provides spread over all nodes, then
{len(results[0].finds)} finds of provided CIDs from other nodes (count 1: done at the first
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
