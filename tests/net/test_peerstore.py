from __future__ import annotations

from multiaddr import Multiaddr

from shardroute.identity.keys import Ed25519PrivateKey
from shardroute.identity.peer_id import PeerId
from shardroute.net.peerstore import MAX_ADDRS_PER_PEER, Peerstore

PEER = PeerId.from_public_key(Ed25519PrivateKey.from_seed(b"\x01" * 32).public_key)
A, B, C = (Multiaddr(f"/ip4/10.0.0.{i}/tcp/4001") for i in (1, 2, 3))


def test_live_addresses_follow_every_change_and_every_expiry() -> None:
    """The live view is kept between reads; each add, re-time and expiry shows at once."""
    store = Peerstore()
    assert store.addrs(PEER, 0.0) == ()
    store.add_addrs(PEER, [A], ttl=10.0, now=0.0)
    assert store.addrs(PEER, 1.0) == (A,)
    store.add_addrs(PEER, [B], ttl=20.0, now=1.0)
    assert store.addrs(PEER, 2.0) == (A, B)
    assert store.addrs(PEER, 9.9) == (A, B)
    assert store.addrs(PEER, 10.0) == (B,)  # A expired at 10
    store.add_addrs(PEER, [A, C], ttl=5.0, now=11.0)
    assert store.addrs(PEER, 12.0) == (B, A, C)
    store.set_addrs_ttl(PEER, ttl=1.0, now=12.0)
    assert store.addrs(PEER, 12.5) == (B, A, C)
    assert store.addrs(PEER, 13.0) == ()


def test_an_address_renewed_before_it_expires_stays() -> None:
    store = Peerstore()
    store.add_addrs(PEER, [A], ttl=10.0, now=0.0)
    assert store.addrs(PEER, 5.0) == (A,)
    store.add_addrs(PEER, [A], ttl=10.0, now=8.0)
    assert store.addrs(PEER, 15.0) == (A,)
    assert store.addrs(PEER, 18.0) == ()


def test_addresses_past_the_cap_keep_the_longest_lived() -> None:
    store = Peerstore()
    many = [Multiaddr(f"/ip4/10.1.0.{i}/tcp/4001") for i in range(MAX_ADDRS_PER_PEER + 5)]
    for i, addr in enumerate(many):
        store.add_addrs(PEER, [addr], ttl=100.0 + i, now=0.0)
        assert addr in store.addrs(PEER, 0.0)
    kept = store.addrs(PEER, 1.0)
    assert len(kept) == MAX_ADDRS_PER_PEER and set(kept) == set(many[5:])
