"""A process holding a share of a loopback network: whole nodes (`App`s, via `tests.support.
fleet`), driven by JSON lines on stdin, one answer line per request on stdout. Killing the
process (SIGKILL) kills its nodes the way a crash would.

Its nodes share a `FakeClock`: the network work is real, but periodic work (the refresh) waits
until the test moves the clock (`advance`), so building the network costs no refresh rounds.

    python tests/support/churn_worker.py --refresh-interval 20

Requests (`{"cmd": ..., ...}`), all of them batches run concurrently inside the process:
- `start` `bootstrap: [addr]`, `count`, `chain`: start `count` nodes joining through
  `bootstrap` (with `chain`, one after another, each also through the previous one); answers
  their `nodes: [{peer_id, addr}]`.
- `announce` `items: [[node, shard hex]]`: answers `stored_on` per item.
- `find` `items: [[node, shard hex]]`: one provider each; answers `found` (peer IDs) and
  `seconds` per item.
- `advance` `seconds`: move this process's clock on, running what falls due (refresh rounds)
  to its end; answers `now`.
- `tables`: every node's routing table and when its last refresh round began, and `now` (both
  this process's clock).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import anyio
from multiaddr import Multiaddr

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script: find `tests`

from shardroute.clock import FakeClock
from shardroute.content import ContentId
from tests.support.fleet import Fleet, Member, fleet
from tests.support.settings import loopback

FIND_SECONDS = 30.0
# Finds one process runs at once: as many lookups as a node's own clients would start, not a
# hundred lookups competing for one interpreter (they would time out on CPU, not on the DHT).
FIND_CONCURRENCY = 8


def cid(shard: str) -> ContentId:
    return ContentId.from_shard_hash(bytes.fromhex(shard))


async def start(crew: Fleet, request: dict[str, Any]) -> dict[str, Any]:
    bootstrap = [Multiaddr(a) for a in request["bootstrap"]]
    if request.get("chain"):
        for _ in range(request["count"]):
            previous = [crew.members[-1].addr] if crew.members else []
            await crew.add([*bootstrap, *previous])
    else:
        async with anyio.create_task_group() as tg:
            for _ in range(request["count"]):
                tg.start_soon(crew.add, bootstrap)
    return {"nodes": [{"peer_id": str(m.app.peer_id), "addr": str(m.addr)} for m in crew.members]}


async def announce(crew: Fleet, request: dict[str, Any]) -> dict[str, Any]:
    stored_on: list[int] = [0] * len(request["items"])

    async def one(i: int, member: Member, shard: str) -> None:
        _, stored_on[i] = await member.app.announce_and_wait([cid(shard)])

    async with anyio.create_task_group() as tg:
        for i, (node, shard) in enumerate(request["items"]):
            tg.start_soon(one, i, crew.members[node], shard)
    return {"stored_on": stored_on}


async def find(crew: Fleet, request: dict[str, Any]) -> dict[str, Any]:
    items = request["items"]
    found: list[list[str]] = [[] for _ in items]
    seconds: list[float] = [0.0] * len(items)

    limiter = anyio.CapacityLimiter(FIND_CONCURRENCY)

    async def one(i: int, member: Member, shard: str) -> None:
        await limiter.acquire()
        start = time.monotonic()
        with anyio.move_on_after(FIND_SECONDS):
            async for info in member.app.find_providers(cid(shard).dht_key, 1):
                found[i].append(str(info.peer_id))
                break
        seconds[i] = time.monotonic() - start
        limiter.release()

    async with anyio.create_task_group() as tg:
        for i, (node, shard) in enumerate(items):
            tg.start_soon(one, i, crew.members[node], shard)
    return {"found": found, "seconds": seconds}


async def tables(crew: Fleet, request: dict[str, Any]) -> dict[str, Any]:
    nodes = []
    for member in crew.members:
        last = member.app.refresher.last
        nodes.append(
            {
                "peer_id": str(member.app.peer_id),
                "table": [str(e.peer) for e in member.app.dht.routing_table.snapshot()],
                "refreshed_at": None if last is None else last.started_at,
            }
        )
    return {"nodes": nodes, "now": crew.clock.monotonic()}


async def advance(crew: Fleet, request: dict[str, Any]) -> dict[str, Any]:
    await crew.run_for(request["seconds"])
    return {"now": crew.clock.monotonic()}


COMMANDS = {
    "start": start,
    "announce": announce,
    "find": find,
    "tables": tables,
    "advance": advance,
}


async def main(refresh_interval: float) -> None:
    settings = loopback(refresh_interval=refresh_interval)
    async with fleet(settings, clock=FakeClock()) as crew:
        async for line in anyio.wrap_file(sys.stdin):
            request = json.loads(line)
            answer = await COMMANDS[request["cmd"]](crew, request)
            print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--refresh-interval", type=float, default=20.0)
    anyio.run(main, parser.parse_args().refresh_interval, backend="asyncio")
