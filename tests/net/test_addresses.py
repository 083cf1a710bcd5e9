"""Our addresses and their scopes: interface expansion, the announce policy, observed
addresses confirmed by distinct IP groups, and what a peer of each scope may be handed."""

from __future__ import annotations

import pytest
from multiaddr import Multiaddr

from shardroute.net.addresses import (
    OBSERVATION_TTL,
    AnnouncePolicy,
    LocalAddresses,
    ObservedAddresses,
    Scope,
    expand_wildcards,
    interface_addresses,
    parse_cidr,
    scope_of,
    shareable,
    usable_by,
)


def ma(text: str) -> Multiaddr:
    return Multiaddr(text)


@pytest.mark.parametrize(
    ("addr", "scope"),
    [
        ("/ip4/127.0.0.1/tcp/1", Scope.LOOPBACK),
        ("/ip4/127.0.1.1/tcp/1", Scope.LOOPBACK),
        ("/ip6/::1/tcp/1", Scope.LOOPBACK),
        ("/ip4/169.254.3.4/tcp/1", Scope.LINK_LOCAL),
        ("/ip6/fe80::1/tcp/1", Scope.LINK_LOCAL),
        ("/ip4/10.77.0.2/tcp/1", Scope.PRIVATE),
        ("/ip4/172.20.0.2/tcp/1", Scope.PRIVATE),
        ("/ip4/192.168.1.2/tcp/1", Scope.PRIVATE),
        ("/ip4/100.64.1.2/tcp/1", Scope.PRIVATE),  # carrier-grade NAT
        ("/ip6/fd00::2/tcp/1", Scope.PRIVATE),
        ("/ip6/::ffff:10.0.0.1/tcp/1", Scope.PRIVATE),  # IPv4-mapped counts as IPv4
        ("/ip4/8.8.8.8/tcp/1", Scope.PUBLIC),
        ("/ip4/198.51.100.7/tcp/1", Scope.PUBLIC),  # documentation ranges: public here
        ("/ip6/2001:db8::1/tcp/1", Scope.PUBLIC),
        ("/dns4/node.example/tcp/1", Scope.PUBLIC),
    ],
)
def test_scopes(addr: str, scope: Scope) -> None:
    assert scope_of(ma(addr)) is scope


def test_who_may_be_handed_what() -> None:
    loop, private, public = (
        ma("/ip4/127.0.0.1/tcp/1"),
        ma("/ip4/10.1.2.3/tcp/1"),
        ma("/ip4/203.0.113.9/tcp/1"),
    )
    link = ma("/ip4/169.254.1.1/tcp/1")
    every = [loop, private, public, link]
    assert shareable(every, Scope.LOOPBACK) == (loop, private, public)
    assert shareable(every, Scope.PRIVATE) == (private, public)
    assert shareable(every, Scope.PUBLIC) == (public,)
    assert shareable(every, Scope.PUBLIC, share_private=True) == (private, public)
    assert not usable_by(link, Scope.LOOPBACK)


def test_wildcards_expand_to_interfaces_never_to_the_wildcard() -> None:
    v4 = interface_addresses(ipv6=False)
    assert "127.0.0.1" in v4 and "0.0.0.0" not in v4
    expanded = expand_wildcards([ma("/ip4/0.0.0.0/tcp/4001"), ma("/ip4/127.0.0.1/tcp/5")])
    texts = [str(a) for a in expanded]
    assert "/ip4/127.0.0.1/tcp/4001" in texts and "/ip4/127.0.0.1/tcp/5" in texts
    assert all("0.0.0.0" not in t for t in texts)
    assert texts == [f"/ip4/{ip}/tcp/4001" for ip in v4] + ["/ip4/127.0.0.1/tcp/5"]


def test_announce_replaces_append_adds_no_announce_filters() -> None:
    found = [ma("/ip4/10.0.0.5/tcp/4001"), ma("/ip4/172.17.0.2/tcp/4001")]
    public = ma("/ip4/203.0.113.1/tcp/4001")
    dns = ma("/dns4/node.example/tcp/4001")
    assert AnnouncePolicy().apply(found) == found
    assert AnnouncePolicy(announce=(public,)).apply(found) == [public]
    assert AnnouncePolicy(append_announce=(dns,)).apply(found) == [*found, dns]
    docker = AnnouncePolicy(no_announce=(parse_cidr("172.17.0.0/16"),), append_announce=(dns,))
    assert docker.apply(found) == [found[0], dns]
    assert parse_cidr("10.0.0.1") == parse_cidr("10.0.0.1/32")
    with pytest.raises(ValueError):
        parse_cidr("not a block")


def observer(i: int) -> Multiaddr:
    return ma(f"/ip4/{20 + i}.1.2.3/tcp/4001")  # one /16 group each


def test_an_observed_address_counts_once_four_groups_report_it() -> None:
    seen = ObservedAddresses()
    public = ma("/ip4/203.0.113.5/tcp/4001")
    for i in range(3):
        seen.record(public, observer(i), inbound=True, listen_ports=[4001], now=1.0)
        seen.record(public, observer(i), inbound=True, listen_ports=[4001], now=2.0)  # again
    same_group = ma("/ip4/20.1.9.9/tcp/4001")
    seen.record(public, same_group, inbound=True, listen_ports=[4001], now=3.0)
    assert seen.confirmed(4.0) == []  # three groups, however often they say it
    seen.record(public, observer(3), inbound=True, listen_ports=[4001], now=5.0)
    assert seen.confirmed(6.0) == [public]
    assert seen.confirmed(1.0 + OBSERVATION_TTL + 1) == []  # the reports went stale


def test_a_peer_we_dialed_sees_our_ephemeral_port_so_our_listen_port_is_the_candidate() -> None:
    seen = ObservedAddresses()
    for i in range(4):
        ephemeral = ma(f"/ip4/203.0.113.5/tcp/{40000 + i}")
        seen.record(ephemeral, observer(i), inbound=False, listen_ports=[4001], now=1.0)
    assert seen.confirmed(2.0) == [ma("/ip4/203.0.113.5/tcp/4001")]


def test_loopback_observations_and_junk_are_ignored() -> None:
    seen = ObservedAddresses()
    for i in range(5):
        seen.record(
            ma("/ip4/127.0.0.1/tcp/4001"), observer(i), inbound=True, listen_ports=[1], now=1
        )
        seen.record(ma("/dns4/x/tcp/1/ws"), observer(i), inbound=True, listen_ports=[1], now=1)
    assert seen.confirmed(2.0) == []


def test_what_each_peer_is_told_about_us() -> None:
    local = LocalAddresses(AnnouncePolicy(append_announce=(ma("/ip4/203.0.113.7/tcp/4001"),)))
    local.listen = [ma("/ip4/127.0.0.1/tcp/4001"), ma("/ip4/10.9.8.7/tcp/4001")]
    assert local.advertised(0.0) == [*local.listen, ma("/ip4/203.0.113.7/tcp/4001")]
    assert local.advertised(0.0, Scope.PRIVATE) == local.advertised(0.0)[1:]
    assert local.advertised(0.0, Scope.PUBLIC) == [ma("/ip4/203.0.113.7/tcp/4001")]
    assert local.is_own(ma("/ip4/10.9.8.7/tcp/4001"))
    assert not local.is_own(ma("/ip4/10.9.8.7/tcp/4002"))
