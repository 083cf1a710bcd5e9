"""Churn: a 100-node loopback network loses 30 % of its nodes at once.

100 `serve` processes would not fit two shared cores (each is an interpreter, a gRPC server
and a metrics server), and 100 `App`s in the test's own process would use one core and could
not be killed as a crash kills them. So ten worker processes hold ten whole nodes each
(tests/support/churn_worker.py): three are SIGKILLed, and their thirty nodes vanish with their
sockets, as in a crash. Each worker's nodes run on a FakeClock: a 20 s refresh on real time
would have 100 Python nodes refreshing (~8 lookups each per round) while the network is still
being built, more than two cores do; on virtual time the refresh runs when the test says.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import sys
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import Process

pytestmark = pytest.mark.network

WORKER = str(Path(__file__).resolve().parents[1] / "support" / "churn_worker.py")
WORKERS, PER_WORKER, KILLED = 10, 10, 3
SHARDS_PER_NODE = 1
REFRESH_INTERVAL = 20.0


class Worker:
    def __init__(self, process: Process) -> None:
        self.process = process
        self.buffer = b""
        self.nodes: list[dict[str, str]] = []

    async def ask(self, cmd: str, timeout: float = 120, **args: Any) -> dict[str, Any]:  # noqa: ASYNC109
        assert self.process.stdin is not None and self.process.stdout is not None
        await self.process.stdin.send((json.dumps({"cmd": cmd, **args}) + "\n").encode())
        with anyio.fail_after(timeout):
            while b"\n" not in self.buffer:
                self.buffer += await self.process.stdout.receive()
        line, self.buffer = self.buffer.split(b"\n", 1)
        return dict(json.loads(line))

    def kill(self) -> None:
        os.killpg(self.process.pid, signal.SIGKILL)


@asynccontextmanager
async def workers(count: int, log: Path) -> AsyncIterator[list[Worker]]:
    async with AsyncExitStack() as stack:
        crew = []
        with log.open("ab") as out:
            for _ in range(count):
                process = await anyio.open_process(
                    [sys.executable, WORKER, "--refresh-interval", str(REFRESH_INTERVAL)],
                    stderr=out,
                    start_new_session=True,
                )
                stack.push_async_callback(stop_worker, process)
                crew.append(Worker(process))
        yield crew


async def stop_worker(process: Process) -> None:
    with anyio.CancelScope(shield=True):
        if process.returncode is None:
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()
        await process.aclose()


def shard(peer_id: str, i: int) -> str:
    return hashlib.sha256(f"churn {peer_id} {i}".encode()).hexdigest()


@pytest.mark.anyio
async def test_a_network_that_loses_30_percent_at_once_still_finds_and_heals(
    tmp_path: Path,
) -> None:
    rng = random.Random(30)
    began = time.monotonic()

    def mark(what: str) -> None:
        print(f"{time.monotonic() - began:6.1f} s: {what}", flush=True)

    async with workers(WORKERS, tmp_path / "workers.log") as crew:
        # One worker's nodes join in a chain; the others' in waves of three workers, each
        # node through three nodes of the workers before.
        first = await crew[0].ask("start", bootstrap=[], count=PER_WORKER, chain=True)
        crew[0].nodes = first["nodes"]

        async def start(worker: Worker, seeds: list[str]) -> None:
            worker.nodes = (await worker.ask("start", bootstrap=seeds, count=PER_WORKER))["nodes"]

        for wave in range(1, WORKERS, 3):
            known = [n["addr"] for w in crew[:wave] for n in w.nodes]
            async with anyio.create_task_group() as tg:
                for worker in crew[wave : wave + 3]:
                    tg.start_soon(start, worker, rng.sample(known, 3))
            mark(f"workers {wave}-{wave + 2} started")

        # Every node announces its shards; each is stored on its closest peers.
        async def announce(worker: Worker) -> None:
            items = [[j, shard(n["peer_id"], s)] for j, n in enumerate(worker.nodes)
                     for s in range(SHARDS_PER_NODE)]  # fmt: skip
            stored_on = (await worker.ask("announce", items=items))["stored_on"]
            assert min(stored_on) >= 10, stored_on

        async with anyio.create_task_group() as tg:
            for worker in crew:
                tg.start_soon(announce, worker)

        mark("announced")
        # 30 % of the nodes gone at once, as in a crash.
        dead_workers = rng.sample(crew, KILLED)
        for worker in dead_workers:
            worker.kill()
        killed_at = time.monotonic()
        dead = {n["peer_id"] for w in dead_workers for n in w.nodes}
        alive = [w for w in crew if w not in dead_workers]
        everyone = [(n["peer_id"], s) for w in crew for n in w.nodes
                    for s in range(SHARDS_PER_NODE)]  # fmt: skip

        # At once: every shard announced before, found from a surviving node (not its own).
        results: list[tuple[str, list[str], float]] = []

        async def find(worker: Worker, wanted: list[tuple[int, str, str]]) -> None:
            answer = await worker.ask("find", items=[[j, s] for j, _, s in wanted])
            for (_, provider, _), got, took in zip(
                wanted, answer["found"], answer["seconds"], strict=True
            ):
                results.append((provider, got, took))

        plan: dict[int, list[tuple[int, str, str]]] = {}
        for provider, s in everyone:
            while True:
                w = rng.randrange(len(alive))
                j = rng.randrange(PER_WORKER)
                if alive[w].nodes[j]["peer_id"] != provider:
                    break
            plan.setdefault(w, []).append((j, provider, shard(provider, s)))
        async with anyio.create_task_group() as tg:
            for w, wanted in plan.items():
                tg.start_soon(find, alive[w], wanted)
        finds_took = time.monotonic() - killed_at
        mark("found")
        succeeded = sum(got == [provider] for provider, got, _ in results)
        failed = [
            {"provider_dead": provider in dead, "got": got, "seconds": round(took, 2)}
            for provider, got, took in results
            if got != [provider]
        ]
        slowest = max(took for _, _, took in results)

        # After the next refresh round of every survivor, no table holds a dead peer.
        async def tables() -> list[dict[str, Any]]:
            return [n for w in alive for n in (await w.ask("tables"))["nodes"]]

        killed_clock = {w: (await w.ask("tables"))["now"] for w in alive}
        async with anyio.create_task_group() as tg:
            for worker in alive:
                tg.start_soon(partial(worker.ask, "advance", seconds=REFRESH_INTERVAL + 1))
        mark("refreshed")
        refreshed = [
            n["refreshed_at"] is not None and n["refreshed_at"] >= killed_clock[w]
            for w in alive
            for n in (await w.ask("tables"))["nodes"]
        ]
        assert all(refreshed), "a survivor ran no refresh round after the kill"
        nodes = await tables()
        holding = {n["peer_id"]: sorted(dead & set(n["table"])) for n in nodes}
        holding = {peer: held for peer, held in holding.items() if held}
        print(
            json.dumps(
                {
                    "finds": len(results),
                    "failed": failed,
                    "succeeded": succeeded,
                    "finds_seconds": finds_took,
                    "slowest_find": slowest,
                    "tables_holding_dead": len(holding),
                    "dead_entries": sum(len(v) for v in holding.values()),
                    "table_sizes": sorted(len(n["table"]) for n in nodes),
                }
            )
        )
        assert len(results) == WORKERS * PER_WORKER * SHARDS_PER_NODE
        assert succeeded >= 0.99 * len(results), failed
        assert not holding, holding
        # The survivors still know one another (the refresh did not empty the tables).
        assert min(len(n["table"]) for n in nodes) >= 10
