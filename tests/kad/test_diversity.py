from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shardroute.addrs import ip_group
from shardroute.identity.peer_id import PeerId
from shardroute.kad.diversity import DiversityFilter, drop_overrepresented


def _peer(n: int) -> PeerId:
    return PeerId(raw=b"\x00\x24\x08\x01\x12\x20" + n.to_bytes(32, "big"))


@pytest.mark.parametrize(
    ("host", "group"),
    [
        ("1.2.3.4", "ip4:1.2.0.0/16"),
        ("1.2.250.1", "ip4:1.2.0.0/16"),
        ("1.3.0.1", "ip4:1.3.0.0/16"),
        ("12.34.56.78", "ip4:12.0.0.0/8"),  # legacy class A: one group for the /8
        ("73.1.1.1", "ip4:73.0.0.0/8"),
        ("74.1.1.1", "ip4:74.1.0.0/16"),
        ("2a01:4f8:1:2::3", "ip6:2a01:4f8::/32"),
        ("2a01:4f8:ffff::1", "ip6:2a01:4f8::/32"),
        ("2a01:4f9::1", "ip6:2a01:4f9::/32"),
        ("::ffff:1.2.3.4", "ip4:1.2.0.0/16"),  # IPv4-mapped counts as IPv4
    ],
)
def test_ip_groups(host: str, group: str) -> None:
    assert ip_group(host) == group


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "10.1.2.3",
        "192.168.1.1",
        "172.16.0.9",
        "100.64.0.1",
        "169.254.1.1",
        "::1",
        "fe80::1",
        "fd00::1",
        "2001:db8::1",
        "0.0.0.0",
    ],
)
def test_non_global_addresses_are_exempt_unless_configured(host: str) -> None:
    assert ip_group(host) is None
    assert ip_group(host, exempt_private=False) is not None


def test_private_addresses_group_when_not_exempt() -> None:
    assert ip_group("10.1.2.3", exempt_private=False) == "ip4:10.1.0.0/16"
    assert ip_group("fd12:3456::1", exempt_private=False) == "ip6:fd12:3456::/32"


@pytest.mark.parametrize("host", ["", "example.com", "1.2.3", "1.2.3.4/16"])
def test_not_an_ip_is_a_value_error(host: str) -> None:
    with pytest.raises(ValueError):
        ip_group(host)


def test_groups_dedupes_and_skips_exempt_hosts() -> None:
    f = DiversityFilter()
    assert f.groups(["1.2.3.4", "1.2.9.9", "10.0.0.1", "5.6.7.8"]) == (
        "ip4:1.2.0.0/16",
        "ip4:5.6.0.0/16",
    )
    assert DiversityFilter(exempt_private=False).groups(["10.0.0.1"]) == ("ip4:10.0.0.0/16",)


def test_two_per_bucket_three_per_table() -> None:
    f = DiversityFilter()
    g = ["ip4:1.2.0.0/16"]
    f.add(_peer(1), 5, g)
    assert f.allows(5, g)
    f.add(_peer(2), 5, g)
    assert not f.allows(5, g)  # bucket cap
    assert f.allows(6, g)
    f.add(_peer(3), 6, g)
    assert not f.allows(7, g)  # table cap
    assert f.allows(7, ["ip4:1.3.0.0/16"])
    assert f.count(g[0]) == 3 and f.count(g[0], 5) == 2 and f.count(g[0], 6) == 1
    f.remove(_peer(1))
    assert f.allows(5, g) and f.allows(7, g)
    assert _peer(1) not in f and _peer(2) in f


def test_allows_does_not_mutate() -> None:
    f = DiversityFilter(max_per_bucket=1, max_per_table=1)
    for _ in range(5):
        assert f.allows(0, ["g"])
    f.add(_peer(1), 0, ["g"])
    assert f.count("g") == 1


def test_a_peer_must_fit_every_group_it_is_in() -> None:
    f = DiversityFilter(max_per_bucket=1)
    f.add(_peer(1), 0, ["a"])
    assert not f.allows(0, ["b", "a"])
    assert f.allows(0, ["b"])
    f.add(_peer(2), 0, ["b", "c"])
    assert f.count("b", 0) == 1 and f.count("c", 0) == 1
    f.remove(_peer(2))
    assert f.count("b") == 0 and f.count("c") == 0


def test_peers_without_groups_are_not_limited() -> None:
    f = DiversityFilter(max_per_bucket=1, max_per_table=1)
    for n in range(5):
        assert f.allows(0, [])
        f.add(_peer(n), 0, [])
    # A grouped peer coming and going in the same bucket leaves the ungrouped ones removable.
    f.add(_peer(9), 0, ["g"])
    f.remove(_peer(9))
    for n in range(5):
        f.remove(_peer(n))
        assert _peer(n) not in f


def test_add_refuses_misuse_and_remove_ignores_strangers() -> None:
    f = DiversityFilter(max_per_bucket=1)
    f.add(_peer(1), 0, ["g"])
    with pytest.raises(ValueError):
        f.add(_peer(1), 1, ["h"])
    with pytest.raises(ValueError):
        f.add(_peer(2), 0, ["g"])
    f.remove(_peer(9))
    assert f.count("g") == 1
    with pytest.raises(ValueError):
        DiversityFilter(max_per_table=0)


@given(
    st.lists(
        st.tuples(
            st.booleans(),
            st.integers(0, 9),
            st.integers(0, 3),
            st.lists(st.sampled_from("abcd"), max_size=3),
        ),
        max_size=60,
    )
)
def test_counts_stay_within_limits_and_match_members(
    ops: list[tuple[bool, int, int, list[str]]],
) -> None:
    f = DiversityFilter()
    members: dict[PeerId, tuple[int, set[str]]] = {}
    for is_add, n, bucket, groups in ops:
        peer = _peer(n)
        if not is_add:
            f.remove(peer)
            members.pop(peer, None)
        elif peer not in members and f.allows(bucket, groups):
            f.add(peer, bucket, groups)
            members[peer] = (bucket, set(groups))
    for g in "abcd":
        in_table = [b for b, gs in members.values() if g in gs]
        assert f.count(g) == len(in_table) <= f.max_per_table
        for b in range(4):
            assert f.count(g, b) == in_table.count(b) <= f.max_per_bucket


def test_drop_overrepresented_drops_whole_crowded_groups() -> None:
    entries = [
        ("a", ["g1"]),
        ("b", ["g1"]),
        ("c", ["g1", "g2"]),
        ("d", ["g2"]),
        ("e", []),
        ("f", ["g1"]),
    ]
    assert drop_overrepresented(entries, 3) == ["d", "e"]  # g1 has 4 peers: all of them go
    assert drop_overrepresented(entries, 4) == ["a", "b", "c", "d", "e", "f"]
    # A peer listing the same group twice counts once.
    assert drop_overrepresented([("a", ["g", "g"]), ("b", ["g"])], 2) == ["a", "b"]
