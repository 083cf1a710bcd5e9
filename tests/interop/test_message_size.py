"""Kademlia message sizes between shardroute and real peers.

rust-libp2p reads at most 16 KiB per Kademlia message (`max_packet_size`) and drops a longer
answer with the whole request: shardroute's GET_PROVIDERS and FIND_NODE answers must fit, even
for a key with over a hundred providers and peers announcing ten long addresses each (QUIC
WebTransport with two certhashes, over IPv4 and IPv6, relayed). The other way, an answer over
shardroute's own inbound limit (4 MiB, go's) is refused without harm to the node.
"""

from __future__ import annotations

import base64
import hashlib
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pytest
from multiaddr import Multiaddr

from shardroute import limits
from shardroute.addrs import parse_multiaddr
from shardroute.app import App
from shardroute.content import ContentId
from shardroute.errors import KadRequestFailed
from shardroute.identity.peer_id import PeerId
from shardroute.kad import handler as kad_handler
from shardroute.kad.messages import KadMessage, MessageType, PeerInfo, encode_message
from shardroute.kad.repositories import ProviderRecord
from tests.interop.thirdparty import start_peer
from tests.support.nodes import address, loopback_app
from tests.support.peers import keyed_peer_id
from tests.support.settings import loopback

pytestmark = pytest.mark.anyio

PROVIDERS = 150
TABLE_PEERS = 40
ADDRS_PER_PEER = 10
RUST_MAX_PACKET = 16 * 1024


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def certhash(rng: random.Random) -> str:
    """A sha2-256 multihash in base64url multibase, as WebTransport addresses carry them."""
    digest = b"\x12\x20" + rng.randbytes(32)
    return "u" + base64.urlsafe_b64encode(digest).decode().rstrip("=")


def long_addrs(rng: random.Random, relay: PeerId) -> tuple[Multiaddr, ...]:
    """Ten loopback addresses of the kinds a go or rust node announces, nothing listening."""
    out: list[str] = []
    for _ in range(2):
        port = rng.randrange(20000, 60000)
        cert, cert2 = (certhash(rng) for _ in range(2))
        transport = f"quic-v1/webtransport/certhash/{cert}/certhash/{cert2}"
        out += [
            f"/ip4/127.0.0.1/tcp/{port}",
            f"/ip4/127.0.0.1/udp/{port}/{transport}",
            f"/ip6/::ffff:127.0.0.1/udp/{port}/{transport}",
            f"/ip4/127.0.0.1/udp/{port}/{transport}/p2p/{relay}/p2p-circuit",
            f"/ip6/::ffff:127.0.0.1/udp/{port}/{transport}/p2p/{relay}/p2p-circuit",
        ]
    assert len(out) == ADDRS_PER_PEER
    return tuple(parse_multiaddr(a) for a in out)


@asynccontextmanager
async def crowded_node() -> AsyncIterator[tuple[App, ContentId, set[PeerId]]]:
    """A node whose key holds PROVIDERS providers and whose table holds TABLE_PEERS peers, every
    one of them with ADDRS_PER_PEER long addresses."""
    rng = random.Random(15)
    relay = keyed_peer_id(15)
    cid = ContentId.from_shard_hash(hashlib.sha256(b"a key with many providers").digest())
    async with loopback_app(loopback(max_providers_per_key=2 * PROVIDERS)) as node:
        now = node.clock.wall()
        providers: set[PeerId] = set()
        for seed in range(PROVIDERS):
            provider = keyed_peer_id(1000 + seed)
            providers.add(provider)
            stored = await node.dht.providers.add_provider(
                ProviderRecord(
                    key=cid.dht_key,
                    provider=provider,
                    addrs=long_addrs(rng, relay),
                    received_at=now,
                    expires_at=now + 3600,
                )
            )
            assert stored
        for seed in range(TABLE_PEERS):
            peer = keyed_peer_id(5000 + seed)
            await node.dht.peer_seen(peer, long_addrs(rng, relay), is_server=True)
        assert await node.dht.providers.count() == PROVIDERS
        assert len(node.dht.routing_table) >= 20
        yield node, cid, providers


async def untrimmed_size(node: App, msg_type: MessageType, key: bytes, providers: int = 0) -> int:
    """What the answer would weigh with every peer's ten addresses: k closer peers and the
    first `providers` provider records."""
    closer = node.dht.keeper.closest_infos(key, limits.KAD_K, ())
    records = await node.dht.providers.get_providers(key, node.clock.wall(), providers)
    message = KadMessage(
        type=msg_type,
        key=key,
        closer_peers=tuple(closer),
        provider_peers=tuple(PeerInfo(r.provider, r.addrs) for r in records),
    )
    return len(encode_message(message))


async def test_rust_reads_shardroute_answers_for_a_crowded_key() -> None:
    async with crowded_node() as (node, cid, providers), start_peer("rust") as rust:
        rust_id = PeerId.parse(rust.peer_id)
        await rust.command("dial", addr=str(address(node)))
        with anyio.fail_after(10):
            await node.host.wait_identified(rust_id)

        # What shardroute answers (the same handler the stream runs), against rust's limit;
        # with every address the answer would not fit.
        request = KadMessage(type=MessageType.GET_PROVIDERS, key=cid.dht_key)
        reply = await node.dht.handler.handle(rust_id, request)
        assert reply is not None
        size = len(encode_message(reply))
        full = await untrimmed_size(
            node, MessageType.GET_PROVIDERS, cid.dht_key, limits.KAD_PROVIDERS_PER_REPLY
        )
        assert full > RUST_MAX_PACKET, full
        assert size <= RUST_MAX_PACKET, (size, len(reply.provider_peers), len(reply.closer_peers))
        assert reply.provider_peers, "trimmed to nothing"

        # rust asks, reads the answer and reports shardroute's providers. (Asked for as many as
        # the answer holds, the peer program answers while rust's query still runs, and so
        # can still read the addresses the answer carried.)
        count = len(reply.provider_peers)
        found = await rust.command("find_providers", cid=str(cid), count=count, timeout=20)
        got = {PeerId.parse(p["peer_id"]) for p in found["providers"]}
        assert got, f"rust found no provider (answer of {size} bytes): {found}"
        assert got <= providers
        assert len(got) == count, (len(got), count)
        assert all(p["addrs"] for p in found["providers"]), found

        # FIND_NODE: twenty table peers, ten addresses each.
        key = hashlib.sha256(b"somewhere in the keyspace").digest()
        reply = await node.dht.handler.handle(
            rust_id, KadMessage(type=MessageType.FIND_NODE, key=key)
        )
        assert reply is not None and len(reply.closer_peers) >= 10
        size = len(encode_message(reply))
        assert await untrimmed_size(node, MessageType.FIND_NODE, key) > RUST_MAX_PACKET
        assert size <= RUST_MAX_PACKET, size
        answer = await rust.command("closest_peers", key_b64=b64(key), timeout=20)
        # rust counts only peers whose answer it read (the control below: not ours when it
        # is over 16 KiB); the table peers have no listener
        assert answer["peers"] == [str(node.peer_id)], answer


async def test_rust_drops_an_answer_over_16_kib(monkeypatch: pytest.MonkeyPatch) -> None:
    """The control: the same answers untrimmed, and rust reads none of them. (So the test
    above holds only because shardroute trims.)"""
    monkeypatch.setattr(kad_handler, "fit_reply", lambda msg: msg)
    async with crowded_node() as (node, cid, _), start_peer("rust") as rust:
        rust_id = PeerId.parse(rust.peer_id)
        await rust.command("dial", addr=str(address(node)))
        request = KadMessage(type=MessageType.GET_PROVIDERS, key=cid.dht_key)
        reply = await node.dht.handler.handle(rust_id, request)
        assert reply is not None and len(encode_message(reply)) > RUST_MAX_PACKET
        found = await rust.command("find_providers", cid=str(cid), count=PROVIDERS, timeout=20)
        assert found["providers"] == [], found
        key = hashlib.sha256(b"somewhere in the keyspace").digest()
        reply = await node.dht.handler.handle(
            rust_id, KadMessage(type=MessageType.FIND_NODE, key=key)
        )
        assert reply is not None and len(encode_message(reply)) > RUST_MAX_PACKET
        answer = await rust.command("closest_peers", key_b64=b64(key), timeout=20)
        assert str(node.peer_id) not in answer["peers"], answer
        # and shardroute kept serving: a small answer still goes through
        small = ContentId.from_shard_hash(hashlib.sha256(b"small").digest())
        await node.dht.provide(small.dht_key)
        found = await rust.command("find_providers", cid=str(small), count=1, timeout=20)
        assert [p["peer_id"] for p in found["providers"]] == [str(node.peer_id)]


async def test_an_answer_over_our_inbound_limit_is_refused_and_the_node_keeps_serving() -> None:
    """go holds a /test/ record of 4 MiB + 1 KiB (go validates nothing there, stores it without
    a size check, and writes any answer); asked for it, go answers with a message over
    shardroute's 4 MiB limit, which shardroute refuses before reading it."""
    key = b"/test/oversized"
    value = random.Random(4).randbytes(limits.KAD_MAX_MESSAGE + 1024)
    async with loopback_app() as node, start_peer("go") as go:
        go_id = PeerId.parse(go.peer_id)
        # go stores the record locally first, then has no peer to send it to
        refused = await go.request("put_value", key_b64=b64(key), value_b64=b64(value), timeout=20)
        answer = await go.command("get_value", key_b64=b64(key), timeout=10)
        assert base64.b64decode(answer["value_b64"]) == value, refused
        await node.node.connect(parse_multiaddr(go.addrs[0]))
        info = PeerInfo(go_id, (parse_multiaddr(go.addrs[0].rsplit("/p2p/", 1)[0]),))
        with pytest.raises(KadRequestFailed, match="exceeds"):
            await node.dht.transport.request(
                info, KadMessage(type=MessageType.GET_VALUE, key=key), timeout=20
            )
        # The connection and the node carry on: requests both ways still work.
        assert node.host.connection(go_id) is not None
        report = await node.dht.get_closest_peers(go_id.raw)
        assert go_id in [p.peer_id for p in report.peers]
        cid = ContentId.from_shard_hash(hashlib.sha256(b"after the big answer").digest())
        assert (await node.dht.provide(cid.dht_key)).accepted == 1
        found = await go.command("find_providers", cid=str(cid), count=1)
        assert [p["peer_id"] for p in found["providers"]] == [str(node.peer_id)]
