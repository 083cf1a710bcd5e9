"""One implementation's network in bench_network.py: its node processes started and joined,
the plan run on them and measured, and py-spy attached to a shardroute node meanwhile."""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.netnodes import (
    ControlPeer,
    NodeFailure,
    NodeProcess,
    ServeNode,
    cpu_seconds,
    peak_rss_mib,
)
from bench.netplan import Call, Node, Plan, run_ops
from bench.netprofile import PROFILE_RATE, RAW, summarize_profile
from bench.netreport import Result
from tests.interop.thirdparty import command_line, require


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


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
