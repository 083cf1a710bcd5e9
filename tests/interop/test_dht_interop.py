"""The DHT in a mixed network: shardroute with real rust-, go- (go-libp2p-kad-dht v0.42, the
"go" kind), js- and py-libp2p nodes, all in server mode under /icn/kad/1.0.0 on 127.0.0.1."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pytest

from shardroute.addrs import parse_multiaddr
from shardroute.app import App
from shardroute.content import ContentId
from shardroute.identity.peer_id import PeerId
from tests.interop.thirdparty import PeerCommandError, ThirdPartyPeer, start_peer
from tests.support.nodes import address, loopback_app
from tests.support.polling import poll
from tests.support.records import pk_record

pytestmark = pytest.mark.anyio
KINDS = ("shardroute", "rust", "go", "js", "py")


@dataclasses.dataclass
class Mixed:
    node: App
    peers: dict[str, ThirdPartyPeer]

    def peer_id(self, kind: str) -> str:
        return str(self.node.peer_id) if kind == "shardroute" else self.peers[kind].peer_id


@asynccontextmanager
async def mixed_network() -> AsyncIterator[Mixed]:
    async with (
        loopback_app() as node,
        start_peer("rust") as rust,
        start_peer("go") as go,
        start_peer("js") as js,
        start_peer("py") as py,
    ):
        peers = {"rust": rust, "go": go, "js": js, "py": py}
        ours = str(address(node))
        with anyio.fail_after(60):
            for peer in peers.values():
                await node.node.connect(parse_multiaddr(peer.addrs[0]))
                await peer.command("dial", addr=ours)
            for a, b in itertools.combinations(peers.values(), 2):
                await a.command("dial", addr=b.addrs[0])
            # py-libp2p does not add peers to its table on connect (interop-peers.md)
            for other in (str(node.peer_id), rust.peer_id, go.peer_id, js.peer_id):
                await py.command("add_peer", peer_id=other)
        # all four run the DHT as servers
        await poll("every peer in shardroute's table", lambda: len(node.dht.routing_table) == 4)
        yield Mixed(node, peers)


async def provide(net: Mixed, kind: str, cid: ContentId) -> None:
    if kind == "shardroute":
        report = await net.node.dht.provide(cid.dht_key)
        assert report.accepted == 4
        return
    await net.peers[kind].command("provide", cid=str(cid))
    if kind == "rust":
        # rust reports its provide done before its ADD_PROVIDERs are written (README.md):
        # wait for the record to land here before anyone looks for it.
        async def landed() -> bool:
            now = net.node.clock.wall()
            return bool(await net.node.dht.providers.get_providers(cid.dht_key, now, 5))

        await poll("rust's provider record on shardroute", landed)


async def find(net: Mixed, kind: str, cid: ContentId) -> list[str]:
    if kind == "shardroute":
        return [str(p.peer_id) async for p in net.node.dht.find_providers(cid.dht_key, 1)]
    answer = await net.peers[kind].command("find_providers", cid=str(cid), count=1, timeout=20)
    return sorted({p["peer_id"] for p in answer["providers"]})


async def test_every_ordered_pair_finds_what_the_other_provided() -> None:
    async with mixed_network() as net:
        for provider in KINDS:
            cid = ContentId.from_shard_hash(
                hashlib.sha256(f"provided by {provider}".encode()).digest()
            )
            await provide(net, provider, cid)
            for finder in KINDS:
                if finder != provider:
                    found = await find(net, finder, cid)
                    assert found == [net.peer_id(provider)], f"{provider} -> {finder}: {found}"


async def test_find_node_answers_are_used_in_both_directions() -> None:
    """shardroute learns a js node from go's FIND_NODE answer (shardroute never dialed js), and
    go finds py's provider record through shardroute's FIND_NODE answer."""
    async with (
        start_peer("go") as go,
        start_peer("js") as js,
        loopback_app() as node,
    ):
        await go.command("dial", addr=js.addrs[0])
        await node.node.connect(parse_multiaddr(go.addrs[0]))
        js_id = PeerId.parse(js.peer_id)
        report = await node.dht.get_closest_peers(js_id.raw)
        assert js_id in [p.peer_id for p in report.peers]  # only go could have told us
        assert js_id in node.dht.routing_table  # and js answered us directly

    async with (
        start_peer("go") as go,
        start_peer("js") as js,
        loopback_app() as node,
    ):
        ours = str(address(node))
        await node.node.connect(parse_multiaddr(js.addrs[0]))
        await go.command("dial", addr=ours)
        cid = ContentId.from_shard_hash(hashlib.sha256(b"reachable through shardroute").digest())
        # js admits shardroute to its table only after probing it; provide until the record
        # reaches shardroute (its only DHT peer), a few tries at most.
        for _ in range(5):
            await js.command("provide", cid=str(cid))
            if await node.dht.providers.count():
                break
            await anyio.sleep(1)
        assert await node.dht.providers.count() == 1
        found = await go.command("find_providers", cid=str(cid), count=1, timeout=20)
        # go never connected to js: it learned of js, and its provider record, from shardroute
        assert [p["peer_id"] for p in found["providers"]] == [js.peer_id]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def test_pk_records_cross_between_implementations() -> None:
    async with mixed_network() as net:
        go = net.peers["go"]
        key, value = pk_record()
        await net.node.dht.put_value(key, value)
        answer = await go.command("get_value", key_b64=b64(key))
        assert base64.b64decode(answer["value_b64"]) == value

        key, value = pk_record()
        await go.command("put_value", key_b64=b64(key), value_b64=b64(value))
        assert await net.node.dht.get_value(key) == value

        rust = net.peers["rust"]
        key, value = pk_record()
        await rust.command("put_value", key_b64=b64(key), value_b64=b64(value))
        assert await net.node.dht.get_value(key) == value
        key, value = pk_record()
        await net.node.dht.put_value(key, value)
        answer = await rust.command("get_value", key_b64=b64(key))
        assert base64.b64decode(answer["value_b64"]) == value

        js = net.peers["js"]
        key, value = pk_record()
        await js.command("put_value", key_b64=b64(key), value_b64=b64(value))
        assert await net.node.dht.get_value(key) == value
        key, value = pk_record()
        await net.node.dht.put_value(key, value)
        answer = await js.command("get_value", key_b64=b64(key))
        assert base64.b64decode(answer["value_b64"]) == value


async def test_py_keys_pk_records_differently_so_they_do_not_cross() -> None:
    """py-libp2p 0.8.1 keys /pk/ records by the hex text of the multihash ("/pk/1220ab…"),
    where go, js and shardroute use the binary multihash: one record, two DHT keys. py refuses
    the binary form, and shardroute's /pk/ validator (like go's) refuses py's hex form."""
    async with mixed_network() as net:
        py = net.peers["py"]
        key, value = pk_record()
        with pytest.raises(PeerCommandError, match="non-hexadecimal"):
            await py.command("put_value", key_b64=b64(key), value_b64=b64(value))
        hex_key = b"/pk/" + key[len(b"/pk/") :].hex().encode()
        await py.command("put_value", key_b64=b64(hex_key), value_b64=b64(value))
        # py answers with its record, which fails /pk/ validation here and is dropped
        assert await net.node.dht.get_value(hex_key) is None
        assert await net.node.dht.get_value(key) is None
