"""The gRPC API in process, over a real port on 127.0.0.1, against a real SQLite file."""

from __future__ import annotations

import dataclasses
import hashlib
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import anyio.abc
import base58 as b58
import grpc
import pytest
from multiaddr import Multiaddr

from shardroute.api.client import AsyncClient, Client
from shardroute.app import App
from shardroute.content import ContentId
from shardroute.identity.keys import Ed25519PrivateKey
from shardroute.pb.api.v1 import shardroute_pb2 as pb
from shardroute.pb.api.v1 import shardroute_pb2_grpc as pb_grpc
from shardroute.store.database import SqliteStore
from tests.support.nodes import address
from tests.support.peers import keyed_peer_id
from tests.support.settings import loopback

pytestmark = pytest.mark.anyio


@dataclasses.dataclass
class Served:
    app: App
    store: SqliteStore
    client: AsyncClient
    address: str


@asynccontextmanager
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    """A whole node on a SQLite file in `tmp_path`, its gRPC API on an ephemeral port."""
    settings = loopback(data_dir=str(tmp_path), grpc_listen="127.0.0.1:0", announce_batch_limit=100)
    async with App(settings, identity=Ed25519PrivateKey.generate()) as app:
        assert app.api is not None and isinstance(app.storage, SqliteStore)
        target = f"127.0.0.1:{app.api.port}"
        async with AsyncClient(target, timeout=10) as client:
            yield Served(app, app.storage, client, target)


def digest(i: int) -> bytes:
    return hashlib.sha256(f"shard {i}".encode()).digest()


async def test_announce_any_form_is_durable_and_normalised(tmp_path: Path) -> None:
    async with served(tmp_path) as s:
        v1 = str(ContentId.from_shard_hash(digest(1)))
        v0_style = ContentId(1, 0x55, ContentId.from_shard_hash(digest(2)).multihash)
        base58 = "z" + b58.b58encode(v0_style.to_bytes()).decode()
        result = await s.client.announce([v1, base58, digest(3)])
        assert result.announced == 3 and result.stored_on is None
        assert result.cids[0] == v1 and result.cids[2] == str(ContentId.from_shard_hash(digest(3)))
        assert await s.store.announcements.count() == 3
        assert await s.client.withdraw([digest(3)]) == 1
        info = await s.client.node_info()
        assert (
            info.announced_records == 2
            and info.mode == "server"
            and info.protocol == "/icn/kad/1.0.0"
        )


BAD_REQUESTS = [
    ("announce", {"shards": ["not-a-cid"]}, grpc.StatusCode.INVALID_ARGUMENT, "shards[0]"),
    ("announce", {"shards": []}, grpc.StatusCode.INVALID_ARGUMENT, "empty"),
    ("announce", {"shards": [b"\x00" * 31]}, grpc.StatusCode.INVALID_ARGUMENT, "32 bytes"),
    (
        "announce",
        {"shards": [digest(i) for i in range(101)]},
        grpc.StatusCode.INVALID_ARGUMENT,
        "batch limit",
    ),
    ("announce", {"shards": [digest(1), "bafyBAD"]}, grpc.StatusCode.INVALID_ARGUMENT, "shards[1]"),
    ("announce_wait", {"shards": [digest(1)]}, grpc.StatusCode.UNAVAILABLE, "no peers"),
    ("find", {"shard": "Qm123"}, grpc.StatusCode.INVALID_ARGUMENT, "shard"),
    ("find", {"shard": digest(5), "count": 100_000}, grpc.StatusCode.INVALID_ARGUMENT, "count"),
    ("find", {"shard": digest(5)}, grpc.StatusCode.UNAVAILABLE, "no peers"),
    ("locate", {"shards": [digest(1)], "need": 0}, grpc.StatusCode.INVALID_ARGUMENT, "need"),
    ("locate", {"shards": [digest(1)], "need": 2}, grpc.StatusCode.INVALID_ARGUMENT, "need"),
    ("closest", {"key": "nonsense"}, grpc.StatusCode.INVALID_ARGUMENT, "key"),
    (
        "closest",
        {"key": str(ContentId.from_shard_hash(digest(1)))},
        grpc.StatusCode.UNAVAILABLE,
        "no peers",
    ),
    (
        "connect",
        {"multiaddr": "/ip4/300.1.1.1/tcp/1"},
        grpc.StatusCode.INVALID_ARGUMENT,
        "multiaddr",
    ),
    ("put", {"key": b"/icn/x", "value": b"v"}, grpc.StatusCode.INVALID_ARGUMENT, "namespace"),
    ("mode", {"mode": 0}, grpc.StatusCode.INVALID_ARGUMENT, "got MODE_UNSPECIFIED"),
    ("mode", {"mode": 7}, grpc.StatusCode.INVALID_ARGUMENT, "unknown value 7"),
]


@pytest.mark.parametrize(("call", "args", "code", "words"), BAD_REQUESTS)
async def test_bad_requests_get_the_right_code_and_change_nothing(
    tmp_path: Path, call: str, args: dict[str, object], code: grpc.StatusCode, words: str
) -> None:
    async with served(tmp_path) as s:
        before = (await s.store.announcements.count(), await s.store.providers.count())
        with pytest.raises(grpc.aio.AioRpcError) as info:
            c = s.client
            if call == "announce":
                await c.announce(args["shards"])  # type: ignore[arg-type]
            elif call == "announce_wait":
                await c.announce(args["shards"], wait=True)  # type: ignore[arg-type]
            elif call == "find":
                [p async for p in c.find_providers(args["shard"], count=args.get("count", 3))]  # type: ignore[arg-type]
            elif call == "locate":
                [p async for p in c.locate(args["shards"], need=args["need"])]  # type: ignore[arg-type]
            elif call == "closest":
                await c.closest_peers(args["key"])  # type: ignore[arg-type]
            elif call == "connect":
                await c.connect(args["multiaddr"])  # type: ignore[arg-type]
            elif call == "mode":
                # the raw stub: the client's own API cannot even express an unknown value
                async with grpc.aio.insecure_channel(s.address) as channel:
                    stub = pb_grpc.ShardRouteStub(channel)  # type: ignore[no-untyped-call]
                    await stub.SetMode(pb.SetModeRequest(mode=args["mode"]))  # type: ignore[arg-type]
            else:
                await c.put_value(args["key"], args["value"])  # type: ignore[arg-type]
        assert info.value.code() == code
        assert words in (info.value.details() or "")
        assert (await s.store.announcements.count(), await s.store.providers.count()) == before
        assert s.app.mode == "server"


async def test_two_nodes_announce_find_locate_and_the_sync_client(tmp_path: Path) -> None:
    async with served(tmp_path / "a") as a, served(tmp_path / "b") as b:
        peer, is_server = await b.client.connect(str(address(a.app)))
        assert peer == str(a.app.peer_id) and is_server
        result = await a.client.announce([digest(i) for i in range(4)], wait=True)
        assert result.announced == 4 and result.stored_on == 1
        info = await a.client.node_info()
        assert info.published_shards >= 4 and info.publish_lookups >= 1
        assert info.republish_backlog == 0  # stored on the network, next round scheduled
        found = [p async for p in b.client.find_providers(digest(0), count=1)]
        assert [p.peer_id for p in found] == [str(a.app.peer_id)]
        located = [
            x async for x in b.client.locate([digest(9), digest(1), digest(2)], need=2, per_shard=1)
        ]
        assert {x.index for x in located} == {1, 2}
        closest = await b.client.closest_peers(str(a.app.peer_id))
        assert [p.peer_id for p in closest] == [str(a.app.peer_id)]
        table = await b.client.routing_table()
        assert [p.peer_id for p in table] == [str(a.app.peer_id)]

        def blocking_caller() -> tuple[
            list[str], int
        ]:  # plain synchronous code, as a storage node has
            with Client(b.address) as sync:
                return [
                    p.peer_id for p in sync.find_providers(digest(3), count=1)
                ], sync.node_info().routing_table_size

        # The servers run on this event loop, so the blocking client runs in a thread.
        providers, size = await anyio.to_thread.run_sync(blocking_caller)
        assert providers == [str(a.app.peer_id)] and size == 1

        # An operator turns A into a client: it stops answering, and B (told by identify push)
        # takes it out of its table; back to server, and B takes it in again.
        assert (await a.client.set_mode("client")).mode == "client"
        with anyio.fail_after(10):
            while len(b.app.dht.routing_table):
                await b.app.dht.table_changed.wait()
        assert (await a.client.node_info()).mode == "client"
        assert (await a.client.set_mode("server")).mode == "server"
        with anyio.fail_after(10):
            while not len(b.app.dht.routing_table):
                await b.app.dht.table_changed.wait()


async def test_a_lookup_past_the_callers_deadline_is_deadline_exceeded(tmp_path: Path) -> None:
    async with await anyio.create_tcp_listener(local_host="127.0.0.1") as silent:
        port = silent.extra(anyio.abc.SocketAttribute.local_port)
        held: list[anyio.abc.SocketStream] = []

        async def hold(stream: anyio.abc.SocketStream) -> None:
            held.append(stream)  # accept, then never say a byte

        async with anyio.create_task_group() as tg:
            tg.start_soon(silent.serve, hold)
            async with served(tmp_path) as s:
                mute = keyed_peer_id()
                await s.app.dht.peer_seen(
                    mute, [Multiaddr(f"/ip4/127.0.0.1/tcp/{port}")], is_server=True
                )
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    [p async for p in s.client.find_providers(digest(1), count=1, timeout=1.0)]
                assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                # the server itself gave up at the deadline (not only the client's timer)
                assert "before the deadline" in (info.value.details() or "")
                counted = s.app.metrics.grpc_requests_total.labels(
                    "FindProviders", "DEADLINE_EXCEEDED"
                )
                assert counted._value.get() == 1
            tg.cancel_scope.cancel()


async def test_an_unreadable_store_is_unavailable_and_the_node_keeps_serving(
    tmp_path: Path,
) -> None:
    async with served(tmp_path / "a") as s:
        # Fault injection: the hot-read connection now points at a file that is not SQLite.
        junk = tmp_path / "junk.sqlite3"
        junk.write_bytes(b"not a database " * 512)
        healthy = s.store.providers.reader
        assert healthy is not None
        s.store.providers.reader = sqlite3.connect(junk, check_same_thread=False)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            [p async for p in s.client.find_providers(digest(1), count=1)]
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "local provider records unreadable" in (info.value.details() or "")
        assert (await s.client.announce([digest(2)])).announced == 1  # everything else serves
        s.store.providers.reader.close()
        s.store.providers.reader = healthy
        with pytest.raises(grpc.aio.AioRpcError) as info:  # readable again: no peers, no record
            [p async for p in s.client.find_providers(digest(1), count=1)]
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "no local record" in (info.value.details() or "")
