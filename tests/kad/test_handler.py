from __future__ import annotations

import pytest
from multiaddr import Multiaddr

from shardroute.clock import FakeClock
from shardroute.errors import KadRequestRejected
from shardroute.identity.keys import Ed25519PrivateKey
from shardroute.identity.peer_id import PeerId
from shardroute.kad.handler import KadHandler
from shardroute.kad.messages import KadMessage, MessageType, PeerInfo, ValueRecord
from shardroute.kad.records import build_ipns_record, make_default_validator
from shardroute.kad.stores import MemoryProviderStore, MemoryValueStore

pytestmark = pytest.mark.anyio

ADDR = (Multiaddr("/ip4/127.0.0.1/tcp/4001"),)
KEY = bytes.fromhex("1220b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9")


def pid() -> PeerId:
    return PeerId.from_public_key(Ed25519PrivateKey.generate().public_key)


class World:
    def __init__(self, *, max_per_key: int = 100) -> None:
        self.me = pid()
        self.table = [pid() for _ in range(30)]
        self.clock = FakeClock()
        self.providers = MemoryProviderStore(max_per_key=max_per_key)
        self.values = MemoryValueStore()
        self.handler = KadHandler(
            self_id=self.me,
            providers=self.providers,
            values=self.values,
            validator=make_default_validator(),
            closest_peers=self.closest,
            peer_info=lambda p: PeerInfo(p, ADDR) if p in self.table else None,
            clock=self.clock,
            provider_ttl=12 * 3600,
        )

    def closest(self, key: bytes, count: int, exclude: object) -> list[PeerInfo]:
        return [PeerInfo(p, ADDR) for p in self.table if p not in exclude][:count]  # type: ignore[operator]


async def test_find_node_excludes_requester_and_self_but_puts_a_known_target_first() -> None:
    world = World()
    requester = world.table[0]
    reply = await world.handler.handle(requester, KadMessage(type=MessageType.FIND_NODE, key=b"x"))
    assert reply is not None and len(reply.closer_peers) == 20
    assert requester not in [p.peer_id for p in reply.closer_peers]
    target = world.table[25]
    reply = await world.handler.handle(
        requester, KadMessage(type=MessageType.FIND_NODE, key=target.raw)
    )
    assert reply is not None and reply.closer_peers[0].peer_id == target


async def test_add_provider_is_stored_only_for_the_sender_with_addresses_and_never_answered() -> (
    None
):
    world = World()
    sender, other = world.table[0], world.table[1]
    add = KadMessage(
        type=MessageType.ADD_PROVIDER, key=KEY, provider_peers=(PeerInfo(sender, ADDR),)
    )
    assert await world.handler.handle(sender, add) is None
    forged = KadMessage(
        type=MessageType.ADD_PROVIDER, key=KEY, provider_peers=(PeerInfo(other, ADDR),)
    )
    with pytest.raises(KadRequestRejected):
        await world.handler.handle(sender, forged)
    no_addr = KadMessage(
        type=MessageType.ADD_PROVIDER, key=KEY, provider_peers=(PeerInfo(sender, ()),)
    )
    with pytest.raises(KadRequestRejected):
        await world.handler.handle(sender, no_addr)
    assert [
        r.provider for r in await world.providers.get_providers(KEY, world.clock.wall(), 10)
    ] == [sender]
    reply = await world.handler.handle(other, KadMessage(type=MessageType.GET_PROVIDERS, key=KEY))
    assert reply is not None and [p.peer_id for p in reply.provider_peers] == [sender]
    assert reply.provider_peers[0].addrs == ADDR
    world.clock.advance(12 * 3600 + 1)
    reply = await world.handler.handle(other, KadMessage(type=MessageType.GET_PROVIDERS, key=KEY))
    assert reply is not None and reply.provider_peers == ()


async def test_providers_per_key_are_capped_and_long_keys_refused() -> None:
    world = World(max_per_key=3)
    for peer in world.table[:6]:
        add = KadMessage(
            type=MessageType.ADD_PROVIDER, key=KEY, provider_peers=(PeerInfo(peer, ADDR),)
        )
        await world.handler.handle(peer, add)
    assert await world.providers.count() == 3
    with pytest.raises(KadRequestRejected):
        await world.handler.handle(
            world.table[0], KadMessage(type=MessageType.GET_PROVIDERS, key=b"k" * 81)
        )


async def test_put_and_get_value_with_validation_and_select() -> None:
    world = World()
    owner = Ed25519PrivateKey.generate()
    key, old = build_ipns_record(owner, b"a", sequence=1, expires_at=world.clock.wall() + 3600)
    _, new = build_ipns_record(owner, b"b", sequence=2, expires_at=world.clock.wall() + 3600)
    sender = world.table[0]

    def put(value: bytes) -> KadMessage:
        return KadMessage(type=MessageType.PUT_VALUE, key=key, record=ValueRecord(key, value))

    echo = await world.handler.handle(sender, put(new))
    assert echo is not None and echo.record is not None and echo.record.value == new
    with pytest.raises(KadRequestRejected):
        await world.handler.handle(sender, put(old))  # worse than what we hold
    with pytest.raises(KadRequestRejected):
        await world.handler.handle(sender, put(b"garbage"))
    mismatched = KadMessage(
        type=MessageType.PUT_VALUE, key=key, record=ValueRecord(b"/ipns/other", new)
    )
    with pytest.raises(KadRequestRejected):
        await world.handler.handle(sender, mismatched)
    reply = await world.handler.handle(sender, KadMessage(type=MessageType.GET_VALUE, key=key))
    assert reply is not None and reply.record is not None
    assert reply.record.key == key and reply.record.value == new and reply.record.time_received
    assert len(reply.closer_peers) == 20


async def test_ping_is_answered() -> None:
    world = World()
    reply = await world.handler.handle(world.table[0], KadMessage(type=MessageType.PING))
    assert reply == KadMessage(type=MessageType.PING)
