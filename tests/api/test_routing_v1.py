"""The sans-IO half of the Delegated Routing V1 HTTP API: routes, negotiation, filters, records."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st
from multiaddr import Multiaddr

from shardroute.api.routing_v1 import (
    Filters,
    Format,
    PeerRecord,
    PeersQuery,
    Preflight,
    ProvidersQuery,
    Refusal,
    authorized,
    encode_body,
    encode_line,
    negotiate,
    parse_request,
    result_headers,
)
from shardroute.content import ContentId
from shardroute.identity.keys import Ed25519PrivateKey
from shardroute.identity.peer_id import PeerId

PEER = PeerId.from_public_key(Ed25519PrivateKey.generate().public_key)
CID = ContentId.from_shard_hash(bytes(range(32)))
V4 = Multiaddr("/ip4/192.0.2.1/tcp/4001")
V6 = Multiaddr("/ip6/2001:db8::1/tcp/4001")
QUIC = Multiaddr("/ip4/192.0.2.1/udp/4001/quic-v1")


def test_accept_picks_ndjson_only_when_named() -> None:
    assert negotiate([]) is Format.JSON
    assert negotiate(["application/json"]) is Format.JSON
    assert negotiate(["*/*"]) is Format.JSON
    assert negotiate(["text/html", "image/png"]) is Format.JSON
    assert negotiate(["application/x-ndjson"]) is Format.NDJSON
    assert negotiate(["application/json;q=0.9, Application/X-NDJSON; q=0.1"]) is Format.NDJSON
    assert negotiate(["application/json", "application/x-ndjson"]) is Format.NDJSON


def test_routes() -> None:
    providers = parse_request("GET", f"/routing/v1/providers/{CID}", [])
    assert providers == ProvidersQuery(CID, Format.JSON, Filters())
    peers = parse_request("GET", f"/routing/v1/peers/{PEER.to_cid()}", ["application/x-ndjson"])
    assert peers == PeersQuery(PEER, Format.NDJSON, Filters())
    assert parse_request("OPTIONS", "/whatever", []) == Preflight()
    filtered = parse_request(
        "GET", f"/routing/v1/providers/{CID}?filter-addrs=TCP%2C!ip6&filter-protocols=unknown", []
    )
    assert isinstance(filtered, ProvidersQuery)
    assert filtered.filters == Filters(addrs=("tcp", "!ip6"), protocols=("unknown",))
    for method, target, status in (
        ("GET", "/routing/v1/providers/xyz", 400),
        ("GET", "/routing/v1/peers/xyz", 400),
        ("GET", "/routing/v1/nope", 400),
        ("PUT", "/routing/v1/providers", 501),
        ("GET", "/routing/v1/providers", 501),
        ("GET", "/routing/v1/ipns/name", 501),
        ("POST", f"/routing/v1/providers/{CID}", 501),
        ("GET", "/metrics", 404),
    ):
        refusal = parse_request(method, target, [])
        assert isinstance(refusal, Refusal) and refusal.status == status, (method, target)
        assert refusal.message


@settings(deadline=None)  # py-cid parses slowly on a loaded machine
@given(st.text(max_size=300), st.sampled_from(["GET", "PUT", "OPTIONS", "HEAD", "X"]))
def test_any_target_parses_or_is_refused(target: str, method: str) -> None:
    parsed = parse_request(method, "/routing/v1/" + target, [target])
    assert isinstance(parsed, (ProvidersQuery, PeersQuery, Preflight, Refusal))


def test_address_filters_follow_ipip_484() -> None:
    record = PeerRecord(peer=PEER, addrs=(V4, V6, QUIC), protocols=("transport-bitswap",))
    bare = PeerRecord(peer=PEER)

    def kept(addrs: tuple[str, ...], r: PeerRecord = record) -> tuple[Multiaddr, ...] | None:
        out = Filters(addrs=addrs).apply(r)
        return None if out is None else out.addrs

    assert kept(()) == (V4, V6, QUIC)
    assert kept(("tcp",)) == (V4, V6)
    assert kept(("quic-v1", "ip6")) == (V6, QUIC)  # OR
    assert kept(("!ip6",)) == (V4, QUIC)
    assert kept(("!ip6", "!udp")) == (V4,)  # AND
    assert kept(("tcp", "!ip4")) == (V6,)
    assert kept(("webtransport",)) is None  # nothing left: the record goes
    assert kept(("unknown",)) is None  # it has addresses
    assert kept(("unknown",), bare) == ()
    assert kept(("tcp",), bare) is None
    protocols = Filters(protocols=("TRANSPORT-BITSWAP",))
    assert protocols.apply(record) == record  # kept whole
    assert Filters(protocols=("unknown",)).apply(record) is None
    assert Filters(protocols=("unknown",)).apply(bare) == bare


def test_records_as_the_spec_writes_them() -> None:
    with_p2p = Multiaddr(f"/ip4/192.0.2.1/tcp/4001/p2p/{PEER}")
    record = PeerRecord.of(PEER, [with_p2p, V4, V6], ["b", "a"])
    assert record.addrs == (V4, V6)  # no /p2p/, each once
    line = encode_line(record)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert json.loads(line) == {
        "Schema": "peer",
        "ID": str(PEER),
        "Addrs": ["/ip4/192.0.2.1/tcp/4001", "/ip6/2001:db8::1/tcp/4001"],
        "Protocols": ["a", "b"],
    }
    assert json.loads(encode_body("Providers", [])) == {"Providers": []}
    assert "Protocols" not in json.loads(encode_body("Peers", [PeerRecord(PEER)]))["Peers"][0]


def test_cache_headers_and_tokens() -> None:
    found = dict(result_headers(Format.JSON, found=True, wall=784111777.0, private=False))
    assert found["Cache-Control"] == (
        "public, max-age=300, stale-while-revalidate=172800, stale-if-error=172800"
    )
    assert found["Last-Modified"] == "Sun, 06 Nov 1994 08:49:37 GMT"
    assert found["Vary"] == "Accept" and found["Access-Control-Allow-Origin"] == "*"
    empty = dict(result_headers(Format.NDJSON, found=False, wall=0.0, private=True))
    assert empty["Cache-Control"].startswith("private, max-age=15,")
    assert empty["Content-Type"] == "application/x-ndjson"
    assert authorized(None, [])
    assert authorized("t0k", ["Bearer t0k"]) and authorized("t0k", ["bearer  t0k "])
    assert not authorized("t0k", []) and not authorized("t0k", ["Bearer t0"])
    assert not authorized("t0k", ["t0k"]) and not authorized("t0k", ["Bearer t0k", "Bearer t0k"])
