from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from multiaddr import Multiaddr

from shardroute.errors import KadMessageError
from shardroute.identity.keys import Ed25519PrivateKey
from shardroute.identity.peer_id import PeerId
from shardroute.kad.messages import (
    KadMessage,
    MessageType,
    PeerInfo,
    ValueRecord,
    decode_message,
    encode_message,
    fit_reply,
    format_rfc3339,
    parse_rfc3339,
)
from shardroute.limits import KAD_PORTABLE_MESSAGE
from shardroute.pb import dht_pb2
from shardroute.protocol.varint import frame

PEER = PeerId.parse("12D3KooWBtg3aaRMjxwedh83aGiUkwSxDwUZkzuJcfaqUmo7R3pq")
LOCAL = Multiaddr("/ip4/127.0.0.1/tcp/4001")
HELLO_KEY = bytes.fromhex("1220b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9")
PEER_HEX = "0024080112201ed1e8fae2c4a144b8be8fd4b47bf3d3b34b871c3cacf6010f0e42d474fce27e"


def test_digest_encodings() -> None:
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


def test_round_trip_and_bad_entries_dropped_alone() -> None:
    pb = dht_pb2.Message(type=dht_pb2.Message.GET_PROVIDERS, key=HELLO_KEY)
    good = pb.providerPeers.add()
    good.id = PEER.raw
    good.addrs.extend([bytes.fromhex("047f000001060fa1"), b"\xff\xff garbage"])
    bad = pb.closerPeers.add()
    bad.id = b"not a peer id"
    message = decode_message(pb.SerializeToString())
    assert message.provider_peers == (PeerInfo(PEER, (LOCAL,)),)
    assert message.closer_peers == () and message.dropped_peers == 1


def test_unknown_type_and_garbage_are_refused() -> None:
    for body in (dht_pb2.Message(type=9).SerializeToString(), b"\x0a\xff\xff\xff"):  # type: ignore[arg-type]
        try:
            decode_message(body)
        except KadMessageError:
            continue
        raise AssertionError("accepted a bad message")


def test_fit_reply_keeps_replies_under_16_kib() -> None:
    peers = tuple(
        PeerInfo(
            PeerId.from_public_key(Ed25519PrivateKey.generate().public_key),
            tuple(Multiaddr(f"/ip4/10.0.0.{i}/tcp/{4000 + j}") for j in range(10)),
        )
        for i in range(100)
    )
    big = KadMessage(
        type=MessageType.GET_PROVIDERS, key=HELLO_KEY, provider_peers=peers, closer_peers=peers[:40]
    )
    assert len(encode_message(big)) > KAD_PORTABLE_MESSAGE
    fitted = fit_reply(big)
    assert len(encode_message(fitted)) <= KAD_PORTABLE_MESSAGE
    assert fitted.provider_peers and fitted.closer_peers


def test_rfc3339_like_go() -> None:
    assert format_rfc3339(1700000000.0) == "2023-11-14T22:13:20Z"
    assert format_rfc3339(1700000000.5) == "2023-11-14T22:13:20.5Z"
    assert parse_rfc3339("2026-11-22T09:43:24.384000000Z") == 1795340604.384
    assert parse_rfc3339("2023-11-14T23:13:20+01:00") == 1700000000.0
    assert parse_rfc3339("yesterday") is None


@settings(deadline=None)
@given(st.binary(max_size=400))
def test_decoder_fuzz(data: bytes) -> None:
    try:
        decode_message(data)
    except KadMessageError:
        pass


@given(st.sampled_from(list(MessageType)), st.binary(max_size=80), st.binary(max_size=80))
def test_encode_decode_round_trip(kind: MessageType, key: bytes, value: bytes) -> None:
    message = KadMessage(type=kind, key=key, record=ValueRecord(key, value, "2024-01-02T03:04:05Z"))
    assert decode_message(encode_message(message)) == message
