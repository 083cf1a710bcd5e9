"""Kept DHT streams against every third-party peer: a second request to a peer goes on the
stream of the first, and py-libp2p's answer to ADD_PROVIDER (which nobody reads) is caught
before it can pass for the answer to the next request."""

from __future__ import annotations

import pytest

from shardroute.identity.peer_id import PeerId
from shardroute.kad.messages import KadMessage, MessageType, PeerInfo
from tests.interop.test_matrix import cid_of, join
from tests.interop.thirdparty import KINDS, Kind, start_peer
from tests.support.nodes import loopback_app

pytestmark = pytest.mark.anyio

CID = cid_of("stream reuse")
KEY = CID.dht_key


def find_node() -> KadMessage:
    return KadMessage(type=MessageType.FIND_NODE, key=KEY)


@pytest.mark.parametrize("kind", KINDS)
async def test_a_second_request_goes_on_the_stream_of_the_first(kind: Kind) -> None:
    async with loopback_app() as node, start_peer(kind) as peer:
        peer_id = await join(node, peer, "we_dial")
        transport, target = node.kad_transport, PeerInfo(PeerId.parse(peer.peer_id), ())
        first = await transport.request(target, find_node(), timeout=10)
        assert first.type is MessageType.FIND_NODE
        [kept] = transport.kept.idle_streams(peer_id)
        for _ in range(3):
            again = await transport.request(target, find_node(), timeout=10)
            assert again.type is MessageType.FIND_NODE
            assert transport.kept.idle_streams(peer_id) == [kept]
        assert transport.kept.failures(peer_id) == 0


async def test_py_answering_add_provider_is_caught_and_py_then_gets_fresh_streams() -> None:
    async with loopback_app() as node, start_peer("py") as peer:
        peer_id = await join(node, peer, "we_dial")
        transport, target = node.kad_transport, PeerInfo(PeerId.parse(peer.peer_id), ())
        await transport.request(target, find_node(), timeout=10)
        ours = PeerInfo(node.peer_id, tuple(node.host.listen_addrs))
        for round_ in range(1, transport.kept.max_failures + 2):
            add = KadMessage(type=MessageType.ADD_PROVIDER, key=KEY, provider_peers=(ours,))
            await transport.send(target, [add], timeout=10)  # py answers it anyway
            # The next request is answered correctly however the echo is found: as bytes
            # nobody asked for on the kept stream, or as an answer of the wrong type.
            reply = await transport.request(target, find_node(), timeout=10)
            assert reply.type is MessageType.FIND_NODE
            assert transport.kept.failures(peer_id) == round_
        assert transport.kept.single_use(peer_id)
        await transport.request(target, find_node(), timeout=10)
        assert transport.kept.idle_streams(peer_id) == []  # a fresh stream each time now
        found = await peer.command("find_providers", cid=str(CID), count=1)  # and stored
        assert [p["peer_id"] for p in found["providers"]] == [str(node.peer_id)]
