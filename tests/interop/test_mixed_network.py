"""One DHT of twenty nodes on loopback: four each of shardroute (in-process `App`s), rust, go,
js and py, every one bootstrapped from two shardroute nodes only. Every node provides a key of
its own; every implementation looks up every key (from a node other than the provider), and
all 5 x 5 cells must hold for every key."""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field

import anyio
import pytest

from shardroute.app import App
from shardroute.content import ContentId
from shardroute.identity.peer_id import PeerId
from tests.interop.thirdparty import Kind, ThirdPartyPeer, start_peer
from tests.support.nodes import address, loopback_app

pytestmark = pytest.mark.anyio

PER_KIND = 4
PEER_KINDS: tuple[Kind, ...] = ("rust", "go", "js", "py")
ALL = ("shardroute", *PEER_KINDS)


@dataclass
class Member:
    kind: str
    index: int
    app: App | None = None
    peer: ThirdPartyPeer | None = None
    cid: ContentId = field(init=False)

    def __post_init__(self) -> None:
        digest = hashlib.sha256(f"mixed: {self.kind} {self.index}".encode()).digest()
        self.cid = ContentId.from_shard_hash(digest)

    @property
    def peer_id(self) -> str:
        if self.app is not None:
            return str(self.app.peer_id)
        assert self.peer is not None
        return self.peer.peer_id

    def __str__(self) -> str:
        return f"{self.kind}[{self.index}]"


async def bootstrap(member: Member, seeds: list[App]) -> None:
    """Dial the seeds and fill the table from them."""
    seeds = [s for s in seeds if s is not member.app]
    if member.app is not None:
        for seed in seeds:
            await member.app.node.connect(address(seed))
        await member.app.dht.get_closest_peers(member.app.peer_id.raw)
        return
    peer = member.peer
    assert peer is not None
    for seed in seeds:
        await peer.command("dial", addr=str(address(seed)))
    if peer.kind == "py":  # py adds no peer to its table on its own (interop-peers.md)
        for seed in seeds:
            await peer.command("add_peer", peer_id=str(seed.peer_id))
    if peer.kind == "go":  # go admits a peer only after its FIND_NODE check: wait for it
        with anyio.move_on_after(10):
            for _ in range(100):
                if len((await peer.command("routing_table"))["peers"]) >= len(seeds):
                    break
                await anyio.sleep(0.1)
    await peer.command("bootstrap", timeout=30)


@asynccontextmanager
async def network() -> AsyncIterator[list[Member]]:
    async with AsyncExitStack() as stack:
        members: list[Member] = []
        for i in range(PER_KIND):
            app = await stack.enter_async_context(loopback_app())
            members.append(Member("shardroute", i, app=app))
        seeds = [m.app for m in members[:2] if m.app is not None]
        await members[1].app.node.connect(address(seeds[0]))  # type: ignore[union-attr]

        async def start(kind: Kind, index: int) -> None:
            peer = await stack.enter_async_context(start_peer(kind))
            members.append(Member(kind, index, peer=peer))

        # enter_async_context in a task group would tie the exit to the task: start them in
        # turn, kind by kind, which keeps two cores from being swamped by js start-ups.
        for kind in PEER_KINDS:
            for i in range(PER_KIND):
                await start(kind, i)
        with anyio.fail_after(90):
            async with anyio.create_task_group() as tg:
                for member in members[1:]:
                    tg.start_soon(bootstrap, member, seeds if member.index else seeds[:1])
            # A second round, now that every table holds something beyond the seeds.
            async with anyio.create_task_group() as tg:
                for member in members:
                    tg.start_soon(bootstrap, member, [])
        yield members


async def provide(member: Member) -> None:
    if member.app is not None:
        report = await member.app.dht.provide(member.cid.dht_key)
        assert report.accepted >= 1, (str(member), report)
    else:
        assert member.peer is not None
        await member.peer.command("provide", cid=str(member.cid), timeout=30)


async def find(member: Member, cid: ContentId) -> set[str]:
    if member.app is not None:
        return {str(p.peer_id) async for p in member.app.dht.find_providers(cid.dht_key, 1)}
    assert member.peer is not None
    answer = await member.peer.command("find_providers", cid=str(cid), count=1, timeout=30)
    return {p["peer_id"] for p in answer["providers"]}


async def test_every_implementation_finds_every_key() -> None:
    started = time.monotonic()
    async with network() as members:
        assert len(members) == PER_KIND * len(ALL)
        assert {m.kind for m in members} == set(ALL)
        for m in members:
            if m.app is not None:
                PeerId.parse(m.peer_id)
                assert len(m.app.dht.routing_table) >= 4, (str(m), len(m.app.dht.routing_table))

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for member in members:
                    tg.start_soon(provide, member)

        # Finder of `provider`'s key in kind F: the F node after it (never the provider).
        outcomes: dict[tuple[str, str], list[str]] = {(p, f): [] for p in ALL for f in ALL}
        jobs: dict[str, list[tuple[Member, Member]]] = {}
        for provider in members:
            for kind in ALL:
                finder = next(
                    m
                    for m in members
                    if m.kind == kind and m.index == (provider.index + 1) % PER_KIND
                )
                jobs.setdefault(str(finder), []).append((finder, provider))

        async def run(work: list[tuple[Member, Member]]) -> None:
            for finder, provider in work:  # one at a time per node: the peers run one command
                found = await find(finder, provider.cid)
                ok = provider.peer_id in found
                outcomes[(provider.kind, finder.kind)].append(
                    "ok" if ok else f"{finder} missed {provider}'s key (found {sorted(found)})"
                )

        with anyio.fail_after(90):
            async with anyio.create_task_group() as tg:
                for work in jobs.values():
                    tg.start_soon(run, work)

    misses = [o for cell in outcomes.values() for o in cell if o != "ok"]
    table = {f"{p} -> {f}": cell.count("ok") for (p, f), cell in outcomes.items()}
    assert all(len(cell) == PER_KIND for cell in outcomes.values())
    assert not misses, (table, misses)
    assert time.monotonic() - started < 180
