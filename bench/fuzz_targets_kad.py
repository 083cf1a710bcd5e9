"""Fuzz harnesses for the DHT layer: Kademlia messages, record validation, IPNS and DAG-CBOR."""

from __future__ import annotations

from bench.fuzz_fixtures import ID_R, NOW, PEER_I, PEER_R, _fail, _layout, _seed
from shardroute.addrs import parse_multiaddr
from shardroute.content import ContentId
from shardroute.errors import InvalidRecord, KadMessageError
from shardroute.kad import cbor
from shardroute.kad.messages import (
    KadMessage,
    MessageType,
    PeerInfo,
    ValueRecord,
    decode_message,
    encode_message,
    fit_reply,
)
from shardroute.kad.records import (
    build_ipns_record,
    decode_ipns_record,
    make_default_validator,
    pk_record,
)
from shardroute.pb import ipns_pb2


# ------------------------------------------------------------------------------ kad messages
def fuzz_kad(data: bytes) -> None:
    try:
        msg = decode_message(data)
    except KadMessageError:
        return
    body = encode_message(msg)
    if decode_message(body) != msg:
        _fail("kad message does not survive a re-encode")
    limit = 64 + len(data) // 2
    fitted = fit_reply(msg, limit)
    if len(encode_message(fitted)) > limit and (fitted.closer_peers or fitted.provider_peers):
        _fail("fit_reply left peers in a reply over the limit")


def seeds_kad() -> list[bytes]:
    addrs = (
        parse_multiaddr("/ip4/1.2.3.4/tcp/4001"),
        parse_multiaddr("/ip6/::1/tcp/4001"),
        parse_multiaddr("/dns4/example.com/tcp/443/wss"),
    )
    peers = (PeerInfo(PEER_I, addrs, True), PeerInfo(PEER_R, addrs[:1]))
    record_key, record_value = pk_record(ID_R.public_key)
    messages = [
        KadMessage(type=MessageType.FIND_NODE, key=PEER_I.raw, closer_peers=peers),
        KadMessage(
            type=MessageType.GET_PROVIDERS,
            key=ContentId.from_shard_hash(bytes(32)).dht_key,
            closer_peers=peers,
            provider_peers=peers[:1],
        ),
        KadMessage(
            type=MessageType.PUT_VALUE,
            key=record_key,
            record=ValueRecord(record_key, record_value, "2027-01-01T00:00:00Z"),
        ),
        KadMessage(type=MessageType.PING),
    ]
    return [encode_message(m) for m in messages]


# ------------------------------------------------------------------------------ records
VALIDATOR = make_default_validator()
IPNS_KEY, IPNS_VALUE = build_ipns_record(ID_R, b"/ipfs/bafkqaaa", sequence=3, expires_at=NOW + 60)


def fuzz_records(data: bytes) -> None:
    mode, split, body = _layout(data)
    if mode % 3 == 0:  # key and value both from the input
        key, value = body[:split], body[split:]
    elif mode % 3 == 1:
        key, value = b"/pk/" + PEER_R.raw, body
    else:
        key, value = IPNS_KEY, body
    try:
        VALIDATOR.validate(key, value, NOW)
    except InvalidRecord:
        pass
    values = [value[i : i + 1 + split] for i in range(0, len(value), 1 + split)][:8]
    try:
        best = VALIDATOR.select(key, values)
    except InvalidRecord:
        return
    if not 0 <= best < len(values):
        _fail("select picked an index outside the values")


def seeds_records() -> list[bytes]:
    pk_key, pk_value = pk_record(ID_R.public_key)
    return [
        _seed(0, len(pk_key), pk_key + pk_value),
        _seed(1, 0, pk_value),
        _seed(2, 0, IPNS_VALUE),
        _seed(0, len(IPNS_KEY), IPNS_KEY + IPNS_VALUE),
        _seed(2, 40, IPNS_VALUE + IPNS_VALUE),
    ]


# ------------------------------------------------------------------------------ IPNS and CBOR
def _signed_entry(data: bytes, mode: int) -> bytes:
    """An IpnsEntry whose signatureV2 over `data` is real, so validation reaches the CBOR."""
    entry = ipns_pb2.IpnsEntry()
    entry.data = data
    entry.signatureV2 = ID_R.sign(b"ipns-signature:" + data)
    if mode & 2:
        entry.pubKey = ID_R.public_key.to_protobuf()
    if mode & 4:  # V1 fields copied from whatever the data says
        try:
            fields = cbor.decode(data)
        except cbor.CborError:
            fields = {}
        if isinstance(fields, dict):
            for name, attr in (("Value", "value"), ("Validity", "validity")):
                if isinstance(fields.get(name), bytes):
                    setattr(entry, attr, fields[name])
            for name, attr in (("Sequence", "sequence"), ("TTL", "ttl")):
                v = fields.get(name)
                if type(v) is int and 0 <= v < 1 << 64:
                    setattr(entry, attr, v)
        entry.signatureV1 = b"\x00"
    return entry.SerializeToString()


def fuzz_ipns(data: bytes) -> None:
    mode, _, body = _layout(data)
    try:
        decoded = cbor.decode(body)
    except cbor.CborError:
        pass
    else:
        encoded = cbor.encode(decoded)
        if cbor.decode(encoded) != decoded or cbor.encode(cbor.decode(encoded)) != encoded:
            _fail("CBOR value does not survive a canonical re-encode")
    value = body if mode & 1 else _signed_entry(body, mode)
    try:
        record = decode_ipns_record(IPNS_KEY, value, NOW)
    except InvalidRecord:
        return
    if record.expires_at < NOW or record.public_key != ID_R.public_key:
        _fail("a valid IPNS record is expired or signed by another key")
    if VALIDATOR.select(IPNS_KEY, [value, b"junk"]) != 0:
        _fail("select preferred junk over a valid record")


def seeds_ipns() -> list[bytes]:
    entry = ipns_pb2.IpnsEntry()
    entry.ParseFromString(IPNS_VALUE)
    data = entry.data
    extended = cbor.encode(
        {
            **cbor.decode(data),
            "Extra": [1, -2, 1.5, None, True, "t", cbor.Link(b"\x01\x55\x00\x00")],
        }
    )
    return [
        _seed(0, 0, data),
        _seed(2, 0, data),
        _seed(4, 0, data),
        _seed(6, 0, extended),
        _seed(1, 0, IPNS_VALUE),
    ]
