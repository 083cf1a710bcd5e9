from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

import pytest
from multiaddr import Multiaddr

from shardroute.clock import FakeClock
from shardroute.errors import KadRequestRejected
from shardroute.identity.keys import Ed25519PrivateKey
from shardroute.identity.peer_id import PeerId
from shardroute.kad.config import DhtConfig
from shardroute.kad.fairness import default_quota
from shardroute.kad.handler import KadHandler
from shardroute.kad.intake import ProviderIntake
from shardroute.kad.memory_repositories import MemoryProviderStore, MemoryValueStore
from shardroute.kad.messages import (
    KadMessage,
    MessageType,
    PeerInfo,
    ValueRecord,
    encode_message,
    format_rfc3339,
)
from shardroute.kad.records import build_ipns_record, make_default_validator
from shardroute.limits import KAD_PORTABLE_MESSAGE
from shardroute.net.addresses import Scope, shareable
from tests.support.records import pk_record

pytestmark = pytest.mark.anyio

ADDR = (Multiaddr("/ip4/127.0.0.1/tcp/4001"),)
SELF_ADDR = (Multiaddr("/ip4/127.0.0.1/tcp/5001"),)
OTHER_ADDR = (Multiaddr("/ip4/10.1.1.1/tcp/4001"),)
KEY = bytes.fromhex("1220b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9")
HOUR = 3600.0
_SEEDS = iter(range(1, 10_000))


def pid() -> PeerId:
    seed = next(_SEEDS).to_bytes(32, "big")
    return PeerId.from_public_key(Ed25519PrivateKey.from_seed(seed).public_key)


class World:
    """A handler over memory stores and a fake routing table of 30 peers (all with addresses)
    plus `unaddressed`, a table peer we know no address for."""

    def __init__(
        self, *, max_per_key: int = 100, providers_per_reply: int = 20, **config: Any
    ) -> None:
        self.me = pid()
        self.table = [pid() for _ in range(30)]
        self.unaddressed = pid()
        self.clock = FakeClock()
        self.providers = MemoryProviderStore(max_per_key=max_per_key)
        self.values = MemoryValueStore()
        self.handler = KadHandler(
            self_id=self.me,
            providers=self.providers,
            values=self.values,
            validator=make_default_validator(),
            peers=self,
            clock=self.clock,
            config=DhtConfig(**config),
            intake=ProviderIntake(self.providers, default_quota()),
            providers_per_reply=providers_per_reply,
        )
        self.groups: dict[PeerId, str] = {}  # source IP groups of senders (none: exempt)
        # Where each peer's connection comes from (scope tests); unlisted peers are on this
        # host, so every address is usable by them.
        self.scopes: dict[PeerId, Scope] = {}
        self.addrs: tuple[Multiaddr, ...] = ADDR  # what we know for every table peer

    # the handler's PeerDirectory: a table of 30 peers with addresses
    def source_group(self, peer: PeerId) -> str | None:
        return self.groups.get(peer)

    def peer_info(self, peer: PeerId) -> PeerInfo | None:
        if peer == self.me:
            return PeerInfo(peer, SELF_ADDR)
        return PeerInfo(peer, self.addrs) if peer in self.table else None

    def closest_infos(self, key: bytes, count: int, exclude: Collection[PeerId]) -> list[PeerInfo]:
        return [PeerInfo(p, self.addrs) for p in self.table if p not in exclude][:count]

    # The scope filter the host applies (`Host.shareable_to` / `acceptable_from`), keyed on
    # the scope of each peer's connection.
    def visible_to(self, peer: PeerId, addrs: Sequence[Multiaddr]) -> tuple[Multiaddr, ...]:
        return shareable(addrs, self.scopes.get(peer, Scope.LOOPBACK))

    def accepted_from(self, peer: PeerId, addrs: Sequence[Multiaddr]) -> tuple[Multiaddr, ...]:
        return shareable(addrs, self.scopes.get(peer, Scope.LOOPBACK))

    async def ask(self, sender: PeerId, message: KadMessage) -> KadMessage:
        reply = await self.handler.handle(sender, message)
        assert reply is not None
        # Every reply must encode within rust's limit.
        assert len(encode_message(reply)) <= KAD_PORTABLE_MESSAGE
        return reply

    async def provide(self, sender: PeerId, *entries: PeerInfo, key: bytes = KEY) -> None:
        add = KadMessage(type=MessageType.ADD_PROVIDER, key=key, provider_peers=entries)
        assert await self.handler.handle(sender, add) is None  # never answered

    async def providers_of(self, asker: PeerId, key: bytes = KEY) -> tuple[PeerInfo, ...]:
        reply = await self.ask(asker, KadMessage(type=MessageType.GET_PROVIDERS, key=key))
        assert reply.key == key
        return reply.provider_peers


def ids(peers: tuple[PeerInfo, ...]) -> list[PeerId]:
    return [p.peer_id for p in peers]


# -- FIND_NODE ------------------------------------------------------------------------------


async def test_find_node_excludes_requester_and_self() -> None:
    world = World()
    requester = world.table[0]
    reply = await world.ask(requester, KadMessage(type=MessageType.FIND_NODE, key=b"any bytes"))
    assert len(reply.closer_peers) == 20 and reply.key == b""
    assert requester not in ids(reply.closer_peers) and world.me not in ids(reply.closer_peers)


async def test_find_node_puts_a_known_target_first() -> None:
    world = World()
    requester = world.table[0]
    for target in (world.table[25], world.me, requester):
        reply = await world.ask(requester, KadMessage(type=MessageType.FIND_NODE, key=target.raw))
        assert ids(reply.closer_peers)[0] == target
        assert ids(reply.closer_peers).count(target) == 1 and len(reply.closer_peers) == 20
    reply = await world.ask(requester, KadMessage(type=MessageType.FIND_NODE, key=world.me.raw))
    assert reply.closer_peers[0].addrs == SELF_ADDR
    # A peer ID we know no address for is not announced.
    unknown = world.unaddressed
    reply = await world.ask(requester, KadMessage(type=MessageType.FIND_NODE, key=unknown.raw))
    assert unknown not in ids(reply.closer_peers)


async def test_find_node_never_passes_on_what_the_peer_directory_should_have_excluded() -> None:
    world = World()
    requester = world.table[0]

    def sloppy(key: bytes, count: int, exclude: Collection[PeerId]) -> list[PeerInfo]:
        return [PeerInfo(requester, ADDR), PeerInfo(world.me, ADDR), PeerInfo(world.table[1], ())]

    world.closest_infos = sloppy  # type: ignore[method-assign]
    reply = await world.ask(requester, KadMessage(type=MessageType.FIND_NODE, key=b"x"))
    assert reply.closer_peers == ()


async def test_find_node_without_key_is_rejected() -> None:
    world = World()
    with pytest.raises(KadRequestRejected):
        await world.handler.handle(world.table[0], KadMessage(type=MessageType.FIND_NODE))


# -- ADD_PROVIDER / GET_PROVIDERS -----------------------------------------------------------


async def test_add_provider_is_stored_only_for_the_sender_with_addresses() -> None:
    world = World()
    sender, other, asker = world.table[0], world.table[1], world.table[2]
    await world.provide(sender, PeerInfo(sender, ADDR))
    for forged in (PeerInfo(other, ADDR), PeerInfo(sender, ())):
        with pytest.raises(KadRequestRejected):
            await world.provide(sender, forged)
    # A valid entry next to invalid ones: the valid one counts, the rest are ignored.
    await world.provide(other, PeerInfo(sender, OTHER_ADDR), PeerInfo(other, OTHER_ADDR))
    providers = await world.providers_of(asker)
    assert sorted(ids(providers)) == sorted([sender, other])
    by_id = {p.peer_id: p.addrs for p in providers}
    assert by_id[sender] == ADDR and by_id[other] == OTHER_ADDR  # sender's own addrs kept
    assert await world.providers.count() == 2


async def test_get_providers_answers_closer_peers_without_the_requester() -> None:
    world = World()
    asker = world.table[3]
    reply = await world.ask(asker, KadMessage(type=MessageType.GET_PROVIDERS, key=KEY))
    assert reply.provider_peers == () and len(reply.closer_peers) == 20
    assert asker not in ids(reply.closer_peers) and world.me not in ids(reply.closer_peers)


@pytest.mark.parametrize("key", [b"", b"k" * 81])
async def test_provider_keys_must_be_1_to_80_bytes(key: bytes) -> None:
    world = World()
    sender = world.table[0]
    for kind in (MessageType.ADD_PROVIDER, MessageType.GET_PROVIDERS):
        message = KadMessage(type=kind, key=key, provider_peers=(PeerInfo(sender, ADDR),))
        with pytest.raises(KadRequestRejected):
            await world.handler.handle(sender, message)
    assert await world.providers.count() == 0
    await world.provide(sender, PeerInfo(sender, ADDR), key=b"k" * 80)


async def test_providers_expire_after_the_ttl_and_addresses_after_theirs() -> None:
    # TTL 48 h: addresses go after 24 h (go's address TTL), the record after 48 h.
    world = World(provider_ttl=48 * HOUR, provider_addr_ttl=24 * HOUR)
    outsider = pid()  # not in our table: no other source of addresses
    asker = world.table[0]
    await world.provide(outsider, PeerInfo(outsider, OTHER_ADDR))
    world.clock.advance(24 * HOUR - 1)
    assert (await world.providers_of(asker))[0].addrs == OTHER_ADDR
    world.clock.advance(1)
    assert await world.providers_of(asker) == (PeerInfo(outsider, ()),)
    world.clock.advance(24 * HOUR - 1)
    assert ids(await world.providers_of(asker)) == [outsider]
    world.clock.advance(1)
    assert await world.providers_of(asker) == ()


async def test_default_ttls_and_fallback_addresses() -> None:
    # Product default: 12 h records and 12 h addresses; an address TTL is capped at the TTL.
    world = World()
    assert world.handler.provider_ttl == 12 * HOUR
    assert world.handler.provider_addr_ttl == 12 * HOUR
    assert World(provider_addr_ttl=48 * HOUR).handler.provider_addr_ttl == 12 * HOUR
    assert World(provider_addr_ttl=HOUR).handler.provider_addr_ttl == HOUR
    assert World(provider_addr_ttl=0.0).handler.provider_addr_ttl == 0.0
    # Stored addresses aged out: a table peer is answered with the addresses we know now.
    world = World(provider_ttl=48 * HOUR, provider_addr_ttl=HOUR)
    member = world.table[5]
    await world.provide(member, PeerInfo(member, OTHER_ADDR))
    world.clock.advance(HOUR)
    assert await world.providers_of(world.table[0]) == (PeerInfo(member, ADDR),)
    world.clock.advance(47 * HOUR)
    assert await world.providers_of(world.table[0]) == ()


async def test_providers_per_key_are_capped_and_answers_bounded() -> None:
    world = World(max_per_key=3)
    for peer in world.table[:6]:
        await world.provide(peer, PeerInfo(peer, ADDR))  # refusals are silent, never a reset
    assert await world.providers.count() == 3
    assert set(ids(await world.providers_of(world.table[9]))) == set(world.table[:3])
    world = World(providers_per_reply=5)
    for peer in world.table[:12]:
        await world.provide(peer, PeerInfo(peer, ADDR))
    assert len(await world.providers_of(world.table[20])) == 5


# -- address scope --------------------------------------------------------------------------

PUBLIC = Multiaddr("/ip4/203.0.113.7/tcp/4001")
PRIVATE_10 = Multiaddr("/ip4/10.9.8.7/tcp/4001")
PRIVATE_192 = Multiaddr("/ip4/192.168.1.20/tcp/4001")
LOOPBACK = Multiaddr("/ip4/127.0.0.1/tcp/4001")
LOOPBACK6 = Multiaddr("/ip6/::1/tcp/4001")
MIXED = (PRIVATE_10, LOOPBACK, PUBLIC, PRIVATE_192, LOOPBACK6)
# What a peer connected from each scope may be handed of MIXED, in MIXED's order.
SEEN_FROM = {
    Scope.PUBLIC: (PUBLIC,),
    Scope.PRIVATE: (PRIVATE_10, PUBLIC, PRIVATE_192),
    Scope.LOOPBACK: MIXED,
}


def scoped_world() -> tuple[World, dict[Scope, PeerId]]:
    """A world whose table peers all have MIXED addresses, and one asker per scope."""
    world = World()
    world.addrs = MIXED
    askers = {scope: world.table[i] for i, scope in enumerate(SEEN_FROM)}
    world.scopes.update({peer: scope for scope, peer in askers.items()})
    return world, askers


def addrs_in(peers: tuple[PeerInfo, ...]) -> set[Multiaddr]:
    return {a for p in peers for a in p.addrs}


async def test_closer_peers_carry_only_the_addresses_the_askers_scope_can_use() -> None:
    world, askers = scoped_world()
    for scope, asker in askers.items():
        for kind, key in (
            (MessageType.FIND_NODE, b"any target"),
            (MessageType.GET_PROVIDERS, KEY),
            (MessageType.GET_VALUE, b"/pk/none"),
        ):
            reply = await world.ask(asker, KadMessage(type=kind, key=key))
            assert len(reply.closer_peers) == 20, (scope, kind)  # still answered, filtered
            for peer in reply.closer_peers:
                assert peer.addrs == SEEN_FROM[scope], (scope, kind, peer.addrs)
        # The FIND_NODE target, which goes first, passes the same filter.
        target = world.table[25]
        reply = await world.ask(asker, KadMessage(type=MessageType.FIND_NODE, key=target.raw))
        assert reply.closer_peers[0] == PeerInfo(target, SEEN_FROM[scope])
    public = askers[Scope.PUBLIC]
    world.addrs = (PRIVATE_10, LOOPBACK)  # nothing a public peer could dial
    for kind, key in ((MessageType.FIND_NODE, b"x"), (MessageType.GET_PROVIDERS, KEY)):
        reply = await world.ask(public, KadMessage(type=kind, key=key))
        assert reply.closer_peers == (), kind  # not announced with no address at all
    private_reply = await world.ask(
        askers[Scope.PRIVATE], KadMessage(type=MessageType.FIND_NODE, key=b"x")
    )
    assert addrs_in(private_reply.closer_peers) == {PRIVATE_10}


async def test_get_providers_hands_a_public_asker_no_private_or_loopback_address() -> None:
    world, askers = scoped_world()
    outsider = pid()  # on this host (no scope set): everything it tells us is kept
    await world.provide(outsider, PeerInfo(outsider, MIXED))
    for scope, asker in askers.items():
        assert await world.providers_of(asker) == (PeerInfo(outsider, SEEN_FROM[scope]),)
    # Stored addresses aged out: the ones we know now pass the same filter.
    world = World(provider_ttl=48 * HOUR, provider_addr_ttl=HOUR)
    world.addrs = MIXED
    member, public = world.table[5], world.table[6]
    world.scopes[public] = Scope.PUBLIC
    await world.provide(member, PeerInfo(member, (LOOPBACK,)))
    world.clock.advance(HOUR)
    assert await world.providers_of(public) == (PeerInfo(member, (PUBLIC,)),)


async def test_add_provider_from_a_public_sender_keeps_only_its_public_addresses() -> None:
    world = World()
    public, private = pid(), pid()
    world.scopes.update({public: Scope.PUBLIC, private: Scope.PRIVATE})
    local = world.table[0]  # the asker sees whatever was stored
    await world.provide(public, PeerInfo(public, MIXED))
    await world.provide(private, PeerInfo(private, MIXED))
    stored = {p.peer_id: p.addrs for p in await world.providers_of(local)}
    assert stored == {public: (PUBLIC,), private: (PRIVATE_10, PUBLIC, PRIVATE_192)}
    # A public sender with nothing but private and loopback addresses stores nothing.
    lone = pid()
    world.scopes[lone] = Scope.PUBLIC
    with pytest.raises(KadRequestRejected, match="hand out"):
        await world.provide(lone, PeerInfo(lone, (PRIVATE_10, PRIVATE_192, LOOPBACK)))
    assert lone not in ids(await world.providers_of(local))
    # A private sender's private addresses stay, its loopback ones never do.
    only_private = pid()
    world.scopes[only_private] = Scope.PRIVATE
    await world.provide(only_private, PeerInfo(only_private, (LOOPBACK6, PRIVATE_192)))
    stored = {p.peer_id: p.addrs for p in await world.providers_of(local)}
    assert stored[only_private] == (PRIVATE_192,)


# -- PUT_VALUE / GET_VALUE -----------------------------------------------------------------


def put(key: bytes, value: bytes, time_received: str = "") -> KadMessage:
    return KadMessage(
        type=MessageType.PUT_VALUE, key=key, record=ValueRecord(key, value, time_received)
    )


async def test_put_value_validates_and_refuses_worse_records() -> None:
    world = World()
    sender = world.table[0]
    owner = Ed25519PrivateKey.generate()
    expiry = world.clock.wall() + HOUR
    key, old = build_ipns_record(owner, b"a", sequence=1, expires_at=expiry)
    _, new = build_ipns_record(owner, b"b", sequence=2, expires_at=expiry)
    _, newer = build_ipns_record(owner, b"c", sequence=3, expires_at=expiry)

    echo = await world.ask(sender, put(key, new, "1999-01-01T00:00:00Z"))
    # go echoes the request, stamped with its own receive time; the sender's time is ignored.
    assert echo.record == ValueRecord(key, new, format_rfc3339(world.clock.wall()))
    assert echo.closer_peers == ()
    with pytest.raises(KadRequestRejected, match="better"):
        await world.handler.handle(sender, put(key, old))
    stored = await world.values.get(key)
    assert stored is not None and stored.value == new
    await world.ask(sender, put(key, new))  # the same record again is fine
    await world.ask(sender, put(key, newer))
    stored = await world.values.get(key)
    assert stored is not None and stored.value == newer


@pytest.mark.parametrize(
    "message",
    [
        KadMessage(type=MessageType.PUT_VALUE, key=b"/pk/x"),  # no record
        KadMessage(type=MessageType.PUT_VALUE, record=ValueRecord(b"/pk/x", b"v")),  # no key
        put(b"/pk/x", b"garbage"),  # invalid
        put(b"/icn/x", b"anything"),  # unknown namespace
        KadMessage(
            type=MessageType.PUT_VALUE, key=b"/pk/a", record=ValueRecord(b"/pk/b", b"v")
        ),  # key mismatch
    ],
)
async def test_put_value_bad_requests_are_rejected_and_not_stored(message: KadMessage) -> None:
    world = World()
    with pytest.raises(KadRequestRejected):
        await world.handler.handle(world.table[0], message)
    for key in (b"/pk/x", b"/pk/a", b"/pk/b", b"/icn/x"):
        assert await world.values.get(key) is None


async def test_put_value_replaces_a_held_record_that_expired() -> None:
    world = World()
    owner = Ed25519PrivateKey.generate()
    now = world.clock.wall()
    key, short = build_ipns_record(owner, b"a", sequence=5, expires_at=now + 60)
    _, lower = build_ipns_record(owner, b"b", sequence=1, expires_at=now + HOUR)
    await world.ask(world.table[0], put(key, short))
    with pytest.raises(KadRequestRejected):
        await world.handler.handle(world.table[0], put(key, lower))
    world.clock.advance(61)
    await world.ask(world.table[0], put(key, lower))  # ours is no longer valid
    stored = await world.values.get(key)
    assert stored is not None and stored.value == lower
    # Still valid but older than the 48 h we serve values for: treated as absent too.
    _, high = build_ipns_record(owner, b"c", sequence=9, expires_at=now + 100 * HOUR)
    _, low = build_ipns_record(owner, b"d", sequence=2, expires_at=now + 100 * HOUR)
    await world.ask(world.table[0], put(key, high))
    world.clock.advance(48 * HOUR + 1)
    await world.ask(world.table[0], put(key, low))
    stored = await world.values.get(key)
    assert stored is not None and stored.value == low


async def test_get_value_returns_valid_fresh_records_with_closer_peers() -> None:
    world = World()
    sender, asker = world.table[0], world.table[1]
    key, value = pk_record()
    received = world.clock.wall()
    await world.ask(sender, put(key, value))
    world.clock.advance(10)
    reply = await world.ask(asker, KadMessage(type=MessageType.GET_VALUE, key=key))
    assert reply.key == key and reply.record == ValueRecord(key, value, format_rfc3339(received))
    assert len(reply.closer_peers) == 20 and asker not in ids(reply.closer_peers)
    missing = await world.ask(asker, KadMessage(type=MessageType.GET_VALUE, key=b"/pk/none"))
    assert missing.record is None and len(missing.closer_peers) == 20
    # Older than 48 h: no longer served.
    world.clock.advance(48 * HOUR)
    stale = await world.ask(asker, KadMessage(type=MessageType.GET_VALUE, key=key))
    assert stale.record is None
    with pytest.raises(KadRequestRejected):
        await world.handler.handle(asker, KadMessage(type=MessageType.GET_VALUE))


async def test_get_value_never_returns_an_expired_ipns_record() -> None:
    world = World()
    key, value = build_ipns_record(
        Ed25519PrivateKey.generate(), b"a", sequence=1, expires_at=world.clock.wall() + 60
    )
    await world.ask(world.table[0], put(key, value))
    ask = KadMessage(type=MessageType.GET_VALUE, key=key)
    assert (await world.ask(world.table[1], ask)).record is not None
    world.clock.advance(61)
    assert (await world.ask(world.table[1], ask)).record is None


# -- PING and unknown types -----------------------------------------------------------------


async def test_ping_is_answered_and_unknown_types_rejected() -> None:
    world = World()
    reply = await world.ask(world.table[0], KadMessage(type=MessageType.PING))
    assert reply == KadMessage(type=MessageType.PING)
    with pytest.raises(KadRequestRejected):
        await world.handler.handle(world.table[0], KadMessage(type=9))  # type: ignore[arg-type]


def test_bad_configuration_is_refused() -> None:
    for options in ({"provider_ttl": 0.0}, {"k": 0}, {"provider_addr_ttl": -1.0}):
        with pytest.raises(ValueError):
            World(**options)
