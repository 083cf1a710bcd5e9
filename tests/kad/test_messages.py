from __future__ import annotations

import random
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from multiaddr import Multiaddr

from shardroute.errors import KadMessageError, LocalProtocolError
from shardroute.identity.keys import Ed25519PrivateKey
from shardroute.identity.peer_id import PeerId
from shardroute.kad.messages import (
    MAX_ADDRS_PER_PEER,
    MAX_CLOSER_PEERS,
    KadMessage,
    MessageType,
    PeerInfo,
    ValueRecord,
    decode_message,
    encode_message,
    encoded_size,
    fit_reply,
    format_rfc3339,
    parse_rfc3339,
)
from shardroute.limits import KAD_MAX_MESSAGE, KAD_PORTABLE_MESSAGE
from shardroute.pb import dht_pb2
from shardroute.protocol.varint import frame

PEER = PeerId.parse("12D3KooWBtg3aaRMjxwedh83aGiUkwSxDwUZkzuJcfaqUmo7R3pq")
LOCAL = Multiaddr("/ip4/127.0.0.1/tcp/4001")
LOCAL_BYTES = bytes.fromhex("047f000001060fa1")
HELLO_KEY = bytes.fromhex("1220b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9")
PEER_HEX = "0024080112201ed1e8fae2c4a144b8be8fd4b47bf3d3b34b871c3cacf6010f0e42d474fce27e"
# A few fixed peers for the property tests (key generation inside @given is slow).
PEERS = [
    PeerId.from_public_key(Ed25519PrivateKey.from_seed(bytes([i]) * 32).public_key)
    for i in range(8)
]


def test_digest_encodings() -> None:
    """kad-dht.md §4, uvarint frame included."""
    request = frame(encode_message(KadMessage(type=MessageType.FIND_NODE, key=PEER.raw)))
    assert request.hex() == "2c08041226" + PEER_HEX + "5001"
    response = KadMessage(
        type=MessageType.FIND_NODE, closer_peers=(PeerInfo(PEER, (LOCAL,), True),)
    )
    assert frame(encode_message(response)).hex() == (
        "3a080442340a26" + PEER_HEX + "1208047f000001060fa118015001"
    )
    get = KadMessage(type=MessageType.GET_PROVIDERS, key=HELLO_KEY)
    assert (
        frame(encode_message(get)).hex()
        == "28080312221220b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde95001"
    )
    add = KadMessage(
        type=MessageType.ADD_PROVIDER, key=HELLO_KEY, provider_peers=(PeerInfo(PEER, (LOCAL,)),)
    )
    assert frame(encode_message(add)).hex() == (
        "5c08021222" + HELLO_KEY.hex() + "4a320a26" + PEER_HEX + "1208047f000001060fa15001"
    )


def test_digest_vectors_decode() -> None:
    body = bytes.fromhex("080442340a26" + PEER_HEX + "1208047f000001060fa118015001")
    assert decode_message(body) == KadMessage(
        type=MessageType.FIND_NODE, closer_peers=(PeerInfo(PEER, (LOCAL,), True),)
    )
    body = bytes.fromhex(
        "08021222" + HELLO_KEY.hex() + "4a320a26" + PEER_HEX + "1208047f000001060fa15001"
    )
    assert decode_message(body) == KadMessage(
        type=MessageType.ADD_PROVIDER, key=HELLO_KEY, provider_peers=(PeerInfo(PEER, (LOCAL,)),)
    )


def test_bad_entries_are_dropped_alone_and_counted() -> None:
    pb = dht_pb2.Message(type=dht_pb2.Message.GET_PROVIDERS, key=HELLO_KEY)
    good = pb.providerPeers.add()
    good.id = PEER.raw
    good.addrs.extend([LOCAL_BYTES, b"\xff\xff garbage"])
    bad = pb.closerPeers.add()
    bad.id = b"not a peer id"
    empty = pb.closerPeers.add()
    empty.addrs.append(LOCAL_BYTES)
    message = decode_message(pb.SerializeToString())
    assert message.provider_peers == (PeerInfo(PEER, (LOCAL,)),)
    assert message.closer_peers == () and message.dropped_peers == 2


def test_entries_decode_and_encode_the_same_when_they_come_again() -> None:
    """Peer entries are kept by their bytes (and, sending, by their content): a second answer
    with the same entries, a bad one among them, reads and writes exactly as the first; an
    entry too large to keep is coded afresh each time."""
    name = ".".join(c * 60 for c in "nmo")
    long_addrs = [Multiaddr(f"/dns4/{name}.example/tcp/{port}") for port in (1, 2, 3)]
    pb = dht_pb2.Message(type=dht_pb2.Message.FIND_NODE)
    small = pb.closerPeers.add(id=PEERS[0].raw, connection=dht_pb2.Message.CONNECTED)
    small.addrs.append(LOCAL_BYTES)
    pb.closerPeers.add(id=b"not a peer id").addrs.append(LOCAL_BYTES)
    large = pb.closerPeers.add(id=PEERS[1].raw)
    large.addrs.extend(a.to_bytes() for a in long_addrs)
    assert len(large.SerializeToString()) > 512
    body = pb.SerializeToString()
    first, second = decode_message(body), decode_message(body)
    assert first == second and first.dropped_peers == second.dropped_peers == 1
    assert first.closer_peers == (
        PeerInfo(PEERS[0], (LOCAL,), True),
        PeerInfo(PEERS[1], tuple(long_addrs)),
    )
    reference = dht_pb2.Message(type=dht_pb2.Message.FIND_NODE, clusterLevelRaw=1)
    for info in first.closer_peers:
        entry = reference.closerPeers.add(id=info.peer_id.raw)
        entry.addrs.extend(a.to_bytes() for a in info.addrs)
        entry.connection = 1 if info.connected else 0  # type: ignore[assignment]
    for _ in range(2):
        assert encode_message(first) == reference.SerializeToString()


def test_p2p_suffixes_are_stripped_or_dropped() -> None:
    pb = dht_pb2.Message(type=dht_pb2.Message.FIND_NODE)
    entry = pb.closerPeers.add()
    entry.id = PEER.raw
    entry.addrs.extend(
        [
            Multiaddr(f"/ip4/10.0.0.1/tcp/1/p2p/{PEER}").to_bytes(),  # ours: stripped
            Multiaddr(f"/ip4/10.0.0.2/tcp/1/p2p/{PEERS[0]}").to_bytes(),  # another peer's
            LOCAL_BYTES,
        ]
    )
    (info,) = decode_message(pb.SerializeToString()).closer_peers
    assert info.addrs == (Multiaddr("/ip4/10.0.0.1/tcp/1"), LOCAL)


def test_connection_hint_and_unknown_fields() -> None:
    pb = dht_pb2.Message(type=dht_pb2.Message.FIND_NODE, clusterLevelRaw=10)
    for connection in (0, 1, 2, 3):
        entry = pb.closerPeers.add()
        entry.id = PEERS[connection].raw
        entry.connection = connection  # type: ignore[assignment]
    # rust's Record.publisher (666) and ttl (777), py-libp2p's senderRecord (11): ignored.
    body = pb.SerializeToString() + bytes.fromhex("5a0474657374")  # field 11, "test"
    record = dht_pb2.Record(key=b"/pk/x", value=b"v").SerializeToString()
    record += bytes.fromhex("d22901aa") + bytes.fromhex("c8300a")  # 666 bytes, 777 varint
    body += b"\x1a" + bytes([len(record)]) + record
    message = decode_message(body)
    assert [p.connected for p in message.closer_peers] == [False, True, False, False]
    assert message.record == ValueRecord(b"/pk/x", b"v")


def test_lists_and_addresses_are_capped_on_decode() -> None:
    pb = dht_pb2.Message(type=dht_pb2.Message.FIND_NODE)
    for i in range(MAX_CLOSER_PEERS + 10):
        entry = pb.closerPeers.add()
        entry.id = PEERS[i % len(PEERS)].raw
        entry.addrs.extend(
            Multiaddr(f"/ip4/10.0.{i % 250}.{j}/tcp/4001").to_bytes() for j in range(30)
        )
    message = decode_message(pb.SerializeToString())
    assert len(message.closer_peers) == MAX_CLOSER_PEERS
    assert all(len(p.addrs) == MAX_ADDRS_PER_PEER for p in message.closer_peers)


def test_unknown_type_garbage_and_oversize_are_refused() -> None:
    bodies = [
        dht_pb2.Message(type=9).SerializeToString(),  # type: ignore[arg-type]
        b"\x0a\xff\xff\xff",
        b"\x08",  # truncated varint
        bytes(KAD_MAX_MESSAGE + 1),
    ]
    for body in bodies:
        with pytest.raises(KadMessageError):
            decode_message(body)


def test_encode_refuses_a_body_over_max_size() -> None:
    message = KadMessage(type=MessageType.PUT_VALUE, record=ValueRecord(b"k", bytes(2000)))
    with pytest.raises(LocalProtocolError):
        encode_message(message, max_size=1000)
    assert len(encode_message(message)) > 2000


def _many_peers(count: int, addrs: int) -> tuple[PeerInfo, ...]:
    return tuple(
        PeerInfo(
            PeerId.from_public_key(Ed25519PrivateKey.from_seed(i.to_bytes(32, "big")).public_key),
            tuple(Multiaddr(f"/ip4/10.0.{i % 250}.{j}/tcp/{4000 + j}") for j in range(addrs)),
        )
        for i in range(count)
    )


def test_fit_reply_keeps_replies_under_16_kib_and_keeps_order() -> None:
    peers = _many_peers(300, 10)
    big = KadMessage(
        type=MessageType.GET_PROVIDERS,
        key=HELLO_KEY,
        provider_peers=peers,
        closer_peers=peers[:40],
    )
    assert len(encode_message(big)) > KAD_PORTABLE_MESSAGE
    fitted = fit_reply(big)
    assert len(encode_message(fitted)) <= KAD_PORTABLE_MESSAGE
    assert fitted.provider_peers and fitted.closer_peers
    # Prefixes of the original lists, so whatever was put first (the FIND_NODE target) stays.
    assert [p.peer_id for p in fitted.provider_peers] == [
        p.peer_id for p in peers[: len(fitted.provider_peers)]
    ]
    assert fitted.closer_peers[0].peer_id == peers[0].peer_id
    assert all(1 <= len(p.addrs) <= 4 for p in fitted.provider_peers)
    # A reply that fits is returned untouched; a tighter limit trims further.
    assert fit_reply(fitted) is fitted
    assert len(encode_message(fit_reply(big, 4096))) <= 4096


def test_fit_reply_never_trims_a_record() -> None:
    message = KadMessage(
        type=MessageType.GET_VALUE,
        key=b"/pk/x",
        record=ValueRecord(b"/pk/x", bytes(20_000)),
        closer_peers=_many_peers(5, 2),
    )
    fitted = fit_reply(message)
    assert fitted.record == message.record and fitted.closer_peers == ()


def test_rfc3339_like_go_and_js() -> None:
    assert format_rfc3339(1700000000.0) == "2023-11-14T22:13:20Z"
    assert format_rfc3339(1700000000.5) == "2023-11-14T22:13:20.5Z"
    assert format_rfc3339(1700000000.25) == "2023-11-14T22:13:20.25Z"
    assert format_rfc3339(0.0) == "1970-01-01T00:00:00Z"
    assert format_rfc3339(-0.5) == "1969-12-31T23:59:59.5Z"
    assert parse_rfc3339("2026-11-22T09:43:24.384000000Z") == 1795340604.384  # js
    assert parse_rfc3339("2024-01-02T03:04:05.123456789Z") == pytest.approx(
        1704164645.123456789, abs=1e-6
    )
    assert parse_rfc3339("2023-11-14T23:13:20+01:00") == 1700000000.0
    assert parse_rfc3339("2023-11-14T21:13:20-01:00") == 1700000000.0
    assert parse_rfc3339("2023-11-14t22:13:20.5z") == 1700000000.5
    # More than nine fraction digits: cut, not refused.
    assert parse_rfc3339("2023-11-14T22:13:20.1234567891Z") == pytest.approx(1700000000.123456789)
    for bad in (
        "yesterday",
        "",
        "2023-11-14T22:13:20",  # no zone
        "2023-13-14T22:13:20Z",
        "2023-11-14T24:00:00Z",
        "2023-11-14T22:13:20+25:00",
        "2023-11-14T22:13:20.Z",
        "\uff12\uff10\uff12\uff13-11-14T22:13:20Z",  # fullwidth digits
        "2023-11-14T22:13:20Z trailing",
    ):
        assert parse_rfc3339(bad) is None, bad


@given(st.integers(min_value=-(10**10), max_value=2 * 10**11), st.integers(0, 999_999_999))
def test_rfc3339_round_trip(seconds: int, nanos: int) -> None:
    wall = seconds + nanos / 1e9
    text = format_rfc3339(wall)
    assert text.endswith("Z")
    if "." in text:
        assert not text[:-1].endswith("0")  # go drops trailing zeros
    parsed = parse_rfc3339(text)
    assert parsed is not None and parsed == pytest.approx(wall, abs=1e-5)


_addr = st.builds(
    lambda a, b, port: Multiaddr(f"/ip4/10.{a}.{b}.1/tcp/{port}"),
    st.integers(0, 255),
    st.integers(0, 255),
    st.integers(1, 65535),
)
_peer_info = st.builds(
    PeerInfo,
    st.sampled_from(PEERS),
    st.lists(_addr, max_size=MAX_ADDRS_PER_PEER, unique=True).map(tuple),
    st.booleans(),
)
_record = st.builds(
    ValueRecord,
    st.binary(max_size=60),
    st.binary(max_size=200),
    st.sampled_from(["", "2024-01-02T03:04:05Z", "2026-11-22T09:43:24.384000000Z"]),
)
_message = st.builds(
    KadMessage,
    type=st.sampled_from(list(MessageType)),
    key=st.binary(max_size=80),
    record=st.none() | _record,
    closer_peers=st.lists(_peer_info, max_size=6).map(tuple),
    provider_peers=st.lists(_peer_info, max_size=6).map(tuple),
)


@settings(deadline=None, max_examples=200)
@given(_message)
def test_encode_decode_round_trip(message: KadMessage) -> None:
    body = encode_message(message)
    decoded = decode_message(body)
    assert decoded == message and decoded.dropped_peers == 0
    assert encoded_size(message) == len(body)


@settings(deadline=None, max_examples=500)
@given(st.binary(max_size=400))
def test_decoder_fuzz_random(data: bytes) -> None:
    try:
        decode_message(data)
    except KadMessageError:
        pass


@settings(deadline=None, max_examples=300)
@given(_message, st.randoms(use_true_random=False), st.integers(1, 8))
def test_decoder_fuzz_mutated(message: KadMessage, rnd: random.Random, edits: int) -> None:
    body = bytearray(encode_message(message))
    for _ in range(edits):
        op = rnd.randrange(3)
        pos = rnd.randrange(len(body) + 1)
        if op == 0 and body:
            body[min(pos, len(body) - 1)] = rnd.randrange(256)
        elif op == 1:
            body.insert(pos, rnd.randrange(256))
        elif body:
            del body[min(pos, len(body) - 1)]
    try:
        decoded = decode_message(bytes(body))
    except KadMessageError:
        return
    # Whatever survives is well-formed: valid peer IDs, capped address lists.
    for info in decoded.closer_peers + decoded.provider_peers:
        assert PeerId.from_bytes(info.peer_id.raw) == info.peer_id
        assert len(info.addrs) <= MAX_ADDRS_PER_PEER
    assert decode_message(encode_message(replace(decoded, dropped_peers=0))) == decoded
