from __future__ import annotations

import pytest

from shardroute.errors import InvalidRecord
from shardroute.identity.keys import Ed25519PrivateKey
from shardroute.kad import cbor
from shardroute.kad.records import build_ipns_record, make_default_validator, pk_record
from shardroute.pb import ipns_pb2
from tests.kad._dht_records import pk_record as rsa_pk_record

NOW = 1_800_000_000.0
validator = make_default_validator()


def test_pk_records() -> None:
    key, value = rsa_pk_record()
    validator.validate(key, value, NOW)
    _, other_value = rsa_pk_record()
    with pytest.raises(InvalidRecord):
        validator.validate(key, other_value, NOW)  # someone else's key
    with pytest.raises(InvalidRecord):
        validator.validate(b"/pk/garbage", value, NOW)
    ed_key, ed_value = pk_record(Ed25519PrivateKey.generate().public_key)
    validator.validate(ed_key, ed_value, NOW)


def test_unknown_namespace_is_refused() -> None:
    with pytest.raises(InvalidRecord):
        validator.validate(b"/icn/x", b"v", NOW)
    with pytest.raises(InvalidRecord):
        validator.validate(b"no-namespace", b"v", NOW)


def test_ipns_valid_expired_and_tampered() -> None:
    owner = Ed25519PrivateKey.generate()
    key, value = build_ipns_record(owner, b"/ipfs/bafk", sequence=1, expires_at=NOW + 3600)
    validator.validate(key, value, NOW)
    with pytest.raises(InvalidRecord, match="expired"):
        validator.validate(key, value, NOW + 7200)
    entry = ipns_pb2.IpnsEntry()
    entry.ParseFromString(value)
    for field, new in (("value", b"/ipfs/evil"), ("sequence", 9), ("signatureV2", bytes(64))):
        tampered = ipns_pb2.IpnsEntry()
        tampered.CopyFrom(entry)
        setattr(tampered, field, new)
        with pytest.raises(InvalidRecord):
            validator.validate(key, tampered.SerializeToString(), NOW)
    stranger_key, _ = build_ipns_record(
        Ed25519PrivateKey.generate(), b"x", sequence=1, expires_at=NOW + 60
    )
    with pytest.raises(InvalidRecord):
        validator.validate(stranger_key, value, NOW)  # signed by another key than the name


def test_ipns_select_prefers_higher_sequence_then_later_validity() -> None:
    owner = Ed25519PrivateKey.generate()
    key, one = build_ipns_record(owner, b"a", sequence=1, expires_at=NOW + 3600)
    _, two = build_ipns_record(owner, b"b", sequence=2, expires_at=NOW + 60)
    _, two_later = build_ipns_record(owner, b"b", sequence=2, expires_at=NOW + 7200)
    assert validator.select(key, [one, two]) == 1
    assert validator.select(key, [two_later, two, one]) == 0
    assert validator.select(key, [b"garbage", one]) == 1


def test_cbor_round_trip_and_strictness() -> None:
    data = {"Value": b"v", "TTL": 5, "Sequence": 2**40, "Validity": b"t", "ValidityType": 0}
    assert cbor.decode(cbor.encode(data)) == data
    for bad in (b"\xbf", b"\xa1\x01\x02", cbor.encode(data) + b"\x00", b"\x5a\xff\xff\xff\xff"):
        with pytest.raises(cbor.CborError):
            cbor.decode(bad)
