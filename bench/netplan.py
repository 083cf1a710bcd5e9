"""The plan of bench_network.py (the same CIDs, providers and finders for every implementation)
and how its operations run: on their nodes, a fixed number in flight, within a phase budget."""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import math
import random
import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from shardroute.content import ContentId

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
