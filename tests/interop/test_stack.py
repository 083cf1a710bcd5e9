"""shardroute's connection stack against real go-, js- and py-libp2p nodes, both directions."""

from __future__ import annotations

import anyio
import pytest

from shardroute.addrs import parse_multiaddr, split_p2p, with_p2p
from shardroute.errors import DialPeerMismatch
from shardroute.identity.keys import Ed25519PrivateKey
from shardroute.identity.peer_id import PeerId
from shardroute.net.host import Host
from shardroute.net.ping import PING_PROTOCOL
from shardroute.protocol.identify import IDENTIFY_PROTOCOL
from tests.interop.conftest import new_host
from tests.interop.thirdparty import start_peer
from tests.support.polling import poll

pytestmark = pytest.mark.anyio

KINDS = ["rust", "go", "go-v0.20", "js", "py"]


@pytest.mark.parametrize("kind", KINDS)
async def test_shardroute_dials_peer(kind: str) -> None:
    async with start_peer(kind) as peer, new_host() as host:
        conn = await host.dial(parse_multiaddr(peer.addrs[0]))
        peer_id = PeerId.parse(peer.peer_id)
        assert conn.remote_peer == peer_id
        with anyio.fail_after(10):
            await host.wait_identified(peer_id)
        data = host.peerstore.get(peer_id)
        assert data is not None and data.agent_version  # the implementation names itself
        # identify: peer's real protocol list and listen address
        assert {IDENTIFY_PROTOCOL, PING_PROTOCOL, "/icn/kad/1.0.0"} <= data.protocols
        transport, _ = split_p2p(parse_multiaddr(peer.addrs[0]))
        assert transport in host.peerstore.addrs(peer_id, host.clock.monotonic())
        rtts = await host.ping(peer_id, 3)
        assert len(rtts) == 3


@pytest.mark.parametrize("kind", KINDS)
async def test_peer_dials_shardroute(kind: str) -> None:
    async with new_host() as host, start_peer(kind) as peer:
        ours = str(with_p2p(host.listen_addrs[0], host.peer_id))
        await peer.command("dial", addr=ours)
        answer = await peer.command("ping", peer_id=str(host.peer_id), count=2)
        assert len(answer["rtt_ms"]) == 2
        peer_id = PeerId.parse(peer.peer_id)
        with anyio.fail_after(10):
            await host.wait_connected(peer_id)
            await host.wait_identified(peer_id)
        # peer learned our listen address from our identify answer, which it reads after the
        # connection is up: poll
        ours = str(host.listen_addrs[0])
        info: dict = {}

        async def knows_our_address() -> bool:
            info.update(await peer.command("peer_info", peer_id=str(host.peer_id)))
            return ours in info["addrs"]

        await poll(f"{ours} in the {kind} peer's peerstore", knows_our_address)
        if kind == "go-v0.20":
            # The libp2p-go bindings expose no protocol or agent query on the peerstore; go's
            # use of our identify protocol list is shown by the DHT interop tests instead.
            assert "protocols" not in info
        else:
            assert {IDENTIFY_PROTOCOL, PING_PROTOCOL} <= set(info["protocols"])
            if kind == "py":  # py-libp2p 0.8.1 reads identify's agentVersion but does not keep it
                assert info["agent"] is None
            else:
                assert info["agent"].startswith("shardroute/")
        assert "/icn/kad/1.0.0" in host.peerstore.protocols(peer_id)
        assert host.connection(peer_id) is not None and host.connection_count == 1


@pytest.mark.parametrize("kind", KINDS)
async def test_dialing_with_a_wrong_peer_id_fails_clearly(kind: str) -> None:
    async with start_peer(kind) as peer, Host(Ed25519PrivateKey.generate()) as host:
        stranger = PeerId.from_public_key(Ed25519PrivateKey.generate().public_key)
        transport, _ = split_p2p(parse_multiaddr(peer.addrs[0]))
        with pytest.raises(DialPeerMismatch) as info:
            await host.dial(with_p2p(transport, stranger))
        assert peer.peer_id in str(info.value)
