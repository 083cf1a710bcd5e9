"""The interop matrix: shardroute (an in-process `App`) against each third-party implementation,
in both roles (shardroute dials the peer; the peer dials shardroute), cell by cell:

- connect, identify and ping, both ways;
- FIND_NODE answers used both ways (each side learns a node only the other knew);
- provide, then find, both ways, with the provider's returned address dialed by a fresh host;
- closest peers, both ways;
- `/pk/` records put on one side and got on the other.

Where an implementation cannot do a cell, the test asserts the refusal it gives (README.md).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Literal

import anyio
import pytest

from shardroute.addrs import parse_multiaddr, split_p2p
from shardroute.app import App
from shardroute.content import ContentId
from shardroute.identity.peer_id import PeerId
from shardroute.kad.repositories import ProviderRecord
from shardroute.net.ping import PING_PROTOCOL
from shardroute.protocol.identify import IDENTIFY_PROTOCOL
from tests.interop.conftest import new_host
from tests.interop.thirdparty import KINDS, Kind, PeerCommandError, ThirdPartyPeer, start_peer
from tests.support.nodes import address, loopback_app
from tests.support.polling import poll
from tests.support.records import pk_record

pytestmark = pytest.mark.anyio

KAD = "/icn/kad/1.0.0"
Role = Literal["we_dial", "they_dial"]
ROLES: tuple[Role, ...] = ("we_dial", "they_dial")
# The peer programs that can run a closest-peers query (the libp2p-go 0.1.4 bindings expose none).
CLOSEST = {"rust", "go", "js", "py"}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def cid_of(text: str) -> ContentId:
    return ContentId.from_shard_hash(hashlib.sha256(text.encode()).digest())


async def in_peer_table(peer: ThirdPartyPeer, ids: list[str]) -> None:
    """`ids` in the peer's DHT table: go admits only after a FIND_NODE check and js after a
    probe (so poll); py adds nobody on its own (add them). The libp2p-go 0.1.4 bindings show
    no table: nothing to wait on there."""
    if peer.kind == "go-v0.20":
        return

    async def has() -> bool:
        if peer.kind == "py":  # again until it holds: py checks the peer's protocols first
            for peer_id in ids:
                await peer.command("add_peer", peer_id=peer_id)
        table = await peer.command("routing_table")
        return set(ids) <= set(table["peers"])

    await poll(f"{ids} in the {peer.kind} peer's routing table", has)


async def join(node: App, peer: ThirdPartyPeer, role: Role) -> PeerId:
    """Connect `node` and `peer` in `role`, both identified and each in the other's table."""
    peer_id = PeerId.parse(peer.peer_id)
    with anyio.fail_after(30):
        if role == "we_dial":
            assert await node.node.connect(parse_multiaddr(peer.addrs[0])) == peer_id
        else:
            await peer.command("dial", addr=str(address(node)))
        await node.host.wait_identified(peer_id)
    await poll(f"{peer.kind} in shardroute's table", lambda: peer_id in node.dht.routing_table)
    await in_peer_table(peer, [str(node.peer_id)])
    return peer_id


@asynccontextmanager
async def pair(kind: Kind, role: Role) -> AsyncIterator[tuple[App, ThirdPartyPeer, PeerId]]:
    async with loopback_app() as node, start_peer(kind) as peer:
        peer_id = await join(node, peer, role)
        yield node, peer, peer_id


async def reaches(addr: str, peer_id: str) -> None:
    """A fresh host dials `addr` and finds `peer_id` there."""
    full = addr if "/p2p/" in addr else f"{addr}/p2p/{peer_id}"
    async with new_host() as host:
        with anyio.fail_after(15):
            conn = await host.dial(parse_multiaddr(full))
        assert str(conn.remote_peer) == peer_id, (addr, conn.remote_peer)


def loopback_tcp(addrs: list[str]) -> list[str]:
    return [a for a in addrs if a.startswith("/ip4/127.0.0.1/tcp/")]


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("kind", KINDS)
async def test_connect_identify_and_ping(kind: Kind, role: Role) -> None:
    async with pair(kind, role) as (node, peer, peer_id):
        # shardroute's view of the peer, from the peer's identify
        conn = node.host.connection(peer_id)
        assert conn is not None and conn.remote_peer == peer_id
        data = node.host.peerstore.get(peer_id)
        assert data is not None and data.agent_version, data
        assert {KAD, IDENTIFY_PROTOCOL, PING_PROTOCOL} <= data.protocols, data.protocols
        transport, _ = split_p2p(parse_multiaddr(peer.addrs[0]))
        assert transport in node.host.peerstore.addrs(peer_id, node.host.clock.monotonic())

        # the peer's view of shardroute, from shardroute's identify
        ours = str(node.host.listen_addrs[0])
        info: dict = {}

        async def knows_our_address() -> bool:
            # the peer reads our identify after the connection is up: poll
            info.update(await peer.command("peer_info", peer_id=str(node.peer_id)))
            return ours in info["addrs"]

        await poll(f"{ours} in the {kind} peer's peerstore", knows_our_address)
        if kind == "go-v0.20":
            # The bindings' peerstore offers addresses only; its DHT uses our protocol list,
            # as the other cells show.
            assert set(info) == {"id", "ok", "addrs"}, info
        else:
            assert {KAD, IDENTIFY_PROTOCOL, PING_PROTOCOL} <= set(info["protocols"]), info
            if kind == "py":  # py-libp2p 0.8.1 reads identify's agentVersion, does not keep it
                assert info["agent"] is None
            else:
                assert info["agent"].startswith("shardroute/"), info

        rtts = await node.host.ping(peer_id, 2)
        assert len(rtts) == 2 and all(r >= 0 for r in rtts)
        answer = await peer.command("ping", peer_id=str(node.peer_id), count=2)
        assert len(answer["rtt_ms"]) == 2 and all(r >= 0 for r in answer["rtt_ms"])


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("kind", KINDS)
async def test_find_node_answers_are_used_both_ways(kind: Kind, role: Role) -> None:
    """shardroute learns x, a node only the peer knows, from the peer's FIND_NODE answer; the
    peer learns y, a node only shardroute knows, from shardroute's answers."""
    async with loopback_app() as node, start_peer(kind) as peer, loopback_app() as x:
        x_id = x.peer_id
        await x.node.connect(parse_multiaddr(peer.addrs[0]))
        await in_peer_table(peer, [str(x_id)])
        await join(node, peer, role)
        assert node.host.connection(x_id) is None and x_id not in node.dht.routing_table
        report = await node.dht.get_closest_peers(x_id.raw)
        assert x_id in [p.peer_id for p in report.peers], report.peers  # only the peer knew x
        assert x_id in node.dht.routing_table  # and x answered shardroute itself

        async with loopback_app() as y:
            await y.node.connect(address(node))
            await poll("y in shardroute's table", lambda: y.peer_id in node.dht.routing_table)
            assert y.host.connection(PeerId.parse(peer.peer_id)) is None
            if kind in CLOSEST:
                answer = await peer.command("closest_peers", key_b64=b64(y.peer_id.raw))
                assert str(y.peer_id) in answer["peers"], answer
            else:
                refused = await peer.request("closest_peers", key_b64=b64(y.peer_id.raw))
                assert refused["ok"] is False
                assert "unknown command closest_peers" in refused["error"]
            # Every kind: y holds a provider record no one else has. shardroute's GET_PROVIDERS
            # answer has no provider, only closer peers, y among them; the peer must follow it.
            cid = cid_of(f"only y knows, {kind} {role}")
            now = y.clock.wall()
            await y.dht.providers.add_provider(
                ProviderRecord(
                    key=cid.dht_key,
                    provider=y.peer_id,
                    addrs=tuple(y.host.listen_addrs),
                    received_at=now,
                    expires_at=now + 3600,
                )
            )
            assert await node.dht.providers.count() == 0
            found = await peer.command("find_providers", cid=str(cid), count=1)
            assert [p["peer_id"] for p in found["providers"]] == [str(y.peer_id)], found


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("kind", KINDS)
async def test_provide_then_find_both_ways_with_usable_addresses(kind: Kind, role: Role) -> None:
    async with pair(kind, role) as (node, peer, peer_id):
        cid = cid_of(f"provided by shardroute, {kind} {role}")
        report = await node.dht.provide(cid.dht_key)
        assert report.accepted == 1 and [p.peer_id for p in report.peers] == [peer_id]
        providers: list[dict[str, Any]] = []

        async def peer_finds() -> bool:
            # ADD_PROVIDER has no answer: "accepted" means written to the stream, and the
            # peer may be told to find before its handler has read it; go-v0.20 has also
            # once named us without addresses (CI, 2026-12-04): ask until an answer has one
            nonlocal providers
            providers = (await peer.command("find_providers", cid=str(cid), count=1))["providers"]
            return len(providers) == 1 and bool(loopback_tcp(providers[0]["addrs"]))

        await poll(f"{kind} finds shardroute's record with an address", peer_finds, seconds=5)
        [provider] = providers
        assert provider["peer_id"] == str(node.peer_id)
        addrs = loopback_tcp(provider["addrs"])
        await reaches(addrs[0], str(node.peer_id))

        cid = cid_of(f"provided by {kind}, {role}")

        async def stored() -> bool:
            return await node.dht.providers.count() == 2

        # rust reports its provide done before its sends are written, go-v0.20 cannot be
        # asked whether shardroute passed its table check yet: provide until it lands.
        for _ in range(5):
            await peer.command("provide", cid=str(cid))
            try:
                await poll("the peer's provider record on shardroute", stored, seconds=2)
                break
            except AssertionError:
                continue
        assert await stored()
        found_here = [p async for p in node.dht.find_providers(cid.dht_key, 1)]
        assert [p.peer_id for p in found_here] == [peer_id]
        addrs = loopback_tcp([str(a) for a in found_here[0].addrs])
        assert addrs, found_here
        await reaches(addrs[0], peer.peer_id)


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("kind", KINDS)
async def test_closest_peers_both_ways(kind: Kind, role: Role) -> None:
    async with pair(kind, role) as (node, peer, peer_id):
        key = hashlib.sha256(f"closest, {kind} {role}".encode()).digest()
        report = await node.dht.get_closest_peers(key)
        assert [p.peer_id for p in report.peers] == [peer_id]
        assert report.peers[0].addrs
        if kind in CLOSEST:
            answer = await peer.command("closest_peers", key_b64=b64(key))
            assert str(node.peer_id) in answer["peers"], answer
        else:
            refused = await peer.request("closest_peers", key_b64=b64(key))
            assert refused["ok"] is False and "unknown command closest_peers" in refused["error"]


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("kind", KINDS)
async def test_pk_records_both_ways(kind: Kind, role: Role) -> None:
    async with pair(kind, role) as (node, peer, peer_id):
        key, value = pk_record()
        ours = await node.dht.put_value(key, value)
        assert [p.peer_id for p in ours.peers] == [peer_id]
        key2, value2 = pk_record()
        if kind == "py":
            # py-libp2p 0.8.1 keys /pk/ records by the hex text of the multihash: it refuses
            # the binary key go, js, rust and shardroute use, so its records do not cross.
            assert ours.accepted == 0
            # py-libp2p's get_value takes text and looks up its UTF-8 bytes: a binary key
            # cannot be named through its API, and nothing comes back for it.
            answer = await peer.command("get_value", key_b64=b64(key))
            assert answer["value_b64"] is None
            with pytest.raises(PeerCommandError, match="non-hexadecimal"):
                await peer.command("put_value", key_b64=b64(key2), value_b64=b64(value2))
            hex_key = b"/pk/" + key2[len(b"/pk/") :].hex().encode()
            await peer.command("put_value", key_b64=b64(hex_key), value_b64=b64(value2))
            # shardroute's /pk/ validator (like go's) refuses the hex form it is offered
            assert await node.dht.values.get(hex_key) is None
            assert await node.dht.get_value(hex_key) is None
            return
        assert ours.accepted == 1, ours  # the peer echoed our PUT_VALUE
        answer = await peer.command("get_value", key_b64=b64(key))
        assert answer["value_b64"] is not None and base64.b64decode(answer["value_b64"]) == value

        await peer.command("put_value", key_b64=b64(key2), value_b64=b64(value2))
        stored = await node.dht.values.get(key2)
        assert stored is not None and stored.value == value2  # the peer put it on shardroute
        assert await node.dht.get_value(key2) == value2
