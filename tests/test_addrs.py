from __future__ import annotations

import pytest

from shardroute.addrs import (
    addr_group,
    multiaddr_from_bytes,
    multiaddr_to_bytes,
    parse_multiaddr,
    split_p2p,
)
from shardroute.identity.keys import Ed25519PrivateKey
from shardroute.identity.peer_id import PeerId

PEER = PeerId.from_public_key(Ed25519PrivateKey.from_seed(bytes([0x22]) * 32).public_key)


def test_a_cid_peer_id_gives_the_binary_of_its_multihash() -> None:
    # Found by bench/fuzz.py multiaddr: /p2p/<CIDv1> was written as the CID's bytes, which
    # multiaddr_from_bytes (and go) refuse.
    base58_form = parse_multiaddr(f"/ip4/1.2.3.4/tcp/1/p2p/{PEER}")
    cid_form = parse_multiaddr(f"/ip4/1.2.3.4/tcp/1/p2p/{PEER.to_cid()}")
    assert multiaddr_to_bytes(cid_form) == multiaddr_to_bytes(base58_form)
    assert multiaddr_from_bytes(multiaddr_to_bytes(cid_form)) == base58_form
    assert split_p2p(cid_form) == (parse_multiaddr("/ip4/1.2.3.4/tcp/1"), PEER)


def test_text_that_does_not_read_back_as_the_same_bytes_is_refused() -> None:
    # Found by bench/fuzz.py multiaddr: `tmp%2F/tmk` became the path tmp//tmk, printed as
    # /unix/tmp//tmk, which reads back as tmp/tmk.
    with pytest.raises(ValueError, match="round-trip"):
        parse_multiaddr("/unix/tmp%2F/tmk")
    assert str(parse_multiaddr("/unix/tmp%2Fsock")) == "/unix/tmp/sock"


def test_an_address_is_grouped_by_its_ip_as_ip_group_groups_it() -> None:
    assert addr_group(parse_multiaddr("/ip4/1.2.3.4/tcp/1")) == "ip4:1.2.0.0/16"
    assert addr_group(parse_multiaddr("/ip4/12.9.9.9/tcp/1")) == "ip4:12.0.0.0/8"  # legacy /8
    assert addr_group(parse_multiaddr("/ip4/127.0.0.1/tcp/1")) is None  # exempt
    assert addr_group(parse_multiaddr("/ip4/10.1.2.3/tcp/1"), exempt_private=False) == (
        "ip4:10.1.0.0/16"
    )
    assert addr_group(parse_multiaddr("/dns4/example.com/tcp/1")) is None  # no IP
