"""shardroute's connection stack against a real go-libp2p node (v0.24, PyPI libp2p-go)."""

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

pytestmark = pytest.mark.anyio


async def test_shardroute_dials_go() -> None:
    async with start_peer("go") as go, new_host() as host:
        conn = await host.dial(parse_multiaddr(go.addrs[0]))
        go_id = PeerId.parse(go.peer_id)
        assert conn.remote_peer == go_id
        with anyio.fail_after(10):
            await host.wait_identified(go_id)
        data = host.peerstore.get(go_id)
        assert data is not None and data.agent_version  # go-libp2p names itself
        # identify: go's real protocol list and listen address
        assert {IDENTIFY_PROTOCOL, PING_PROTOCOL, "/icn/kad/1.0.0"} <= data.protocols
        transport, _ = split_p2p(parse_multiaddr(go.addrs[0]))
        assert transport in host.peerstore.addrs(go_id, host.clock.monotonic())
        rtts = await host.ping(go_id, 3)
        assert len(rtts) == 3


async def test_go_dials_shardroute() -> None:
    async with new_host() as host, start_peer("go") as go:
        ours = str(with_p2p(host.listen_addrs[0], host.peer_id))
        await go.command("dial", addr=ours)
        answer = await go.command("ping", peer_id=str(host.peer_id), count=2)
        assert len(answer["rtt_ms"]) == 2
        go_id = PeerId.parse(go.peer_id)
        with anyio.fail_after(10):
            while host.connection(go_id) is None:
                await anyio.sleep(0.05)
            await host.wait_identified(go_id)
        # go learned our listen address from our identify answer
        info = await go.command("peer_info", peer_id=str(host.peer_id))
        assert str(host.listen_addrs[0]) in info["addrs"]
        assert "/icn/kad/1.0.0" in host.peerstore.protocols(go_id)
        assert host.connection(go_id) is not None and host.connection_count == 1


async def test_dialing_go_with_a_wrong_peer_id_fails_clearly() -> None:
    async with start_peer("go") as go:
        async with Host(Ed25519PrivateKey.generate()) as host:
            stranger = PeerId.from_public_key(Ed25519PrivateKey.generate().public_key)
            transport, _ = split_p2p(parse_multiaddr(go.addrs[0]))
            with pytest.raises(DialPeerMismatch) as info:
                await host.dial(with_p2p(transport, stranger))
            assert go.peer_id in str(info.value)
