from __future__ import annotations

import itertools
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shardroute.errors import InvalidRecord
from shardroute.identity.keys import Ed25519PrivateKey
from shardroute.identity.peer_id import PeerId
from shardroute.kad import cbor
from shardroute.kad.messages import format_rfc3339
from shardroute.kad.records import (
    IPNS_SIGNATURE_PREFIX,
    IpnsValidator,
    PublicKeyValidator,
    build_ipns_record,
    decode_ipns_record,
    make_default_validator,
    pk_record,
)
from shardroute.pb import ipns_pb2
from tests.support.records import pk_record as rsa_pk_record

NOW = 1_800_000_000.0
validator = make_default_validator()
OWNER = Ed25519PrivateKey.from_seed(bytes(range(32)))
OTHER = Ed25519PrivateKey.from_seed(bytes(32))
NAME_KEY = b"/ipns/" + PeerId.from_public_key(OWNER.public_key).raw


# -- /pk/ ---------------------------------------------------------------------------------


def test_pk_records() -> None:
    key, value = rsa_pk_record()
    validator.validate(key, value, NOW)
    _, other_value = rsa_pk_record()
    with pytest.raises(InvalidRecord):
        validator.validate(key, other_value, NOW)  # someone else's key
    for bad_value in (b"", b"garbage", b"\x08\x01\x12\x20" + bytes(31)):
        with pytest.raises(InvalidRecord):
            validator.validate(key, bad_value, NOW)
    for bad_key in (b"/pk/garbage", b"/pk/", b"/pk"):
        with pytest.raises(InvalidRecord):
            validator.validate(bad_key, value, NOW)
    with pytest.raises(InvalidRecord):
        PublicKeyValidator().validate(b"/ipns/" + key[4:], value, NOW)
    # Ed25519 peer IDs inline their key: the record is valid, if not very useful.
    ed_key, ed_value = pk_record(OWNER.public_key)
    validator.validate(ed_key, ed_value, NOW)
    assert validator.select(key, [value, value]) == 0
    with pytest.raises(InvalidRecord):
        validator.select(key, [])


def test_unknown_namespaces_and_malformed_keys_are_refused() -> None:
    for key in (b"/icn/x", b"no-namespace", b"//x", b"/pk", b"", b"/\xff/x"):
        with pytest.raises(InvalidRecord):
            validator.validate(key, b"v", NOW)
        with pytest.raises(InvalidRecord):
            validator.select(key, [b"v"])
    assert validator.namespaces == {"pk", "ipns"}


# -- /ipns/: building, validating, tampering ------------------------------------------------


def _record(**kwargs: Any) -> bytes:
    kwargs.setdefault("sequence", 1)
    kwargs.setdefault("expires_at", NOW + 3600)
    key, value = build_ipns_record(OWNER, b"/ipfs/bafkqaaa", **kwargs)
    assert key == NAME_KEY
    return value


def _entry(value: bytes) -> ipns_pb2.IpnsEntry:
    entry = ipns_pb2.IpnsEntry()
    entry.ParseFromString(value)
    return entry


def _signed(data: bytes, *, signer: Ed25519PrivateKey = OWNER) -> bytes:
    """A V2-only record over arbitrary CBOR `data`, correctly signed by `signer`."""
    entry = ipns_pb2.IpnsEntry(data=data, signatureV2=signer.sign(IPNS_SIGNATURE_PREFIX + data))
    return entry.SerializeToString()


def _data(**override: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "Value": b"/ipfs/bafkqaaa",
        "Validity": format_rfc3339(NOW + 3600).encode(),
        "ValidityType": 0,
        "Sequence": 1,
        "TTL": 3_600_000_000_000,
    }
    fields.update(override)
    return {k: v for k, v in fields.items() if v is not None}


def test_ipns_record_data_is_canonical_dag_cbor() -> None:
    # Hand-derived DAG-CBOR (keys by length, then bytes), cross-checked with cbor2 canonical.
    data = {"Value": b"v", "TTL": 5, "Sequence": 2, "Validity": b"t", "ValidityType": 0}
    assert cbor.encode(data).hex() == (
        "a56354544c056556616c756541766853657175656e6365026856616c69646974794174"
        "6c56616c69646974795479706500"
    )
    entry = _entry(_record())
    assert entry.data == cbor.encode(_data())
    # V1 copies and signature for old readers: value ‖ validity ‖ "EOL".
    assert entry.value == b"/ipfs/bafkqaaa" and entry.sequence == 1
    assert OWNER.public_key.verify(entry.value + entry.validity + b"EOL", entry.signatureV1)


@pytest.mark.parametrize(
    "options",
    [{}, {"v1_compatible": False}, {"embed_public_key": True}],
    ids=["v1+v2", "v2-only", "embedded-key"],
)
def test_ipns_valid_records(options: dict[str, bool]) -> None:
    value = _record(sequence=7, **options)
    validator.validate(NAME_KEY, value, NOW)
    decoded = decode_ipns_record(NAME_KEY, value, NOW)
    assert decoded.value == b"/ipfs/bafkqaaa" and decoded.sequence == 7
    assert decoded.expires_at == NOW + 3600 and decoded.ttl_ns == 3_600_000_000_000
    assert decoded.public_key == OWNER.public_key


def test_ipns_expiry_is_checked_against_now() -> None:
    value = _record(expires_at=NOW + 3600)
    validator.validate(NAME_KEY, value, NOW + 3600)  # valid through its EOL, as boxo
    with pytest.raises(InvalidRecord, match="expired"):
        validator.validate(NAME_KEY, value, NOW + 3600.001)
    with pytest.raises(InvalidRecord, match="expired"):
        validator.validate(NAME_KEY, _record(expires_at=NOW - 1), NOW)


@pytest.mark.parametrize(
    ("field", "new"),
    [
        ("value", b"/ipfs/evil"),
        ("validity", format_rfc3339(NOW + 7200).encode()),
        ("sequence", 9),
        ("ttl", 1),
        ("signatureV2", bytes(64)),
        ("signatureV2", b""),
        ("data", b""),
        ("pubKey", OTHER.public_key.to_protobuf()),
        ("pubKey", b"not a key"),
    ],
)
def test_ipns_tampered_fields_are_rejected(field: str, new: object) -> None:
    entry = _entry(_record())
    setattr(entry, field, new)
    with pytest.raises(InvalidRecord):
        validator.validate(NAME_KEY, entry.SerializeToString(), NOW)


def test_ipns_tampered_data_and_other_signers_are_rejected() -> None:
    entry = _entry(_record())
    entry.data = entry.data.replace(b"bafkqaaa", b"bafkqaab")
    with pytest.raises(InvalidRecord, match="signature"):
        validator.validate(NAME_KEY, entry.SerializeToString(), NOW)
    # Correctly signed, but by another key than the name's.
    with pytest.raises(InvalidRecord):
        validator.validate(NAME_KEY, _signed(cbor.encode(_data()), signer=OTHER), NOW)
    stranger_key, _ = build_ipns_record(OTHER, b"x", sequence=1, expires_at=NOW + 60)
    with pytest.raises(InvalidRecord):
        validator.validate(stranger_key, _record(), NOW)


def test_ipns_v1_signature_is_not_checked_but_v1_fields_must_match() -> None:
    # boxo verifies only V2; a bad V1 signature does not spoil a record.
    entry = _entry(_record())
    entry.signatureV1 = b"garbage"
    validator.validate(NAME_KEY, entry.SerializeToString(), NOW)
    # Once V1 fields appear, all five must equal the signed ones (absent = default).
    entry.ClearField("ttl")
    with pytest.raises(InvalidRecord, match="V1"):
        validator.validate(NAME_KEY, entry.SerializeToString(), NOW)
    v2_only = _entry(_record(v1_compatible=False))
    v2_only.value = b"/ipfs/bafkqaaa"  # value alone, without the rest
    with pytest.raises(InvalidRecord, match="V1"):
        validator.validate(NAME_KEY, v2_only.SerializeToString(), NOW)


@pytest.mark.parametrize(
    "data",
    [
        _data(Sequence=None),
        _data(TTL=None),
        _data(Value=None),
        _data(Validity=None),
        _data(ValidityType=None),
        _data(Sequence=b"1"),
        _data(Sequence=-1),
        _data(Sequence=True),
        _data(Value="/ipfs/text-not-bytes"),
        _data(ValidityType=1),
        _data(Validity=b"next tuesday"),
        [1, 2, 3],
    ],
)
def test_ipns_bad_signed_data_is_rejected(data: Any) -> None:
    with pytest.raises(InvalidRecord):
        validator.validate(NAME_KEY, _signed(cbor.encode(data)), NOW)


def test_ipns_signed_non_cbor_is_rejected() -> None:
    with pytest.raises(InvalidRecord, match="CBOR"):
        validator.validate(NAME_KEY, _signed(b"\xff not cbor"), NOW)


def test_ipns_extra_signed_fields_are_allowed() -> None:
    data = _data(Extension={"list": [1, -2, None, True, 1.5], "link": cbor.Link(b"\x01\x55")})
    validator.validate(NAME_KEY, _signed(cbor.encode(data)), NOW)


def test_ipns_size_name_and_garbage() -> None:
    big = _record()
    entry = _entry(big)
    entry.signatureV1 = bytes(10 * 1024)  # V1 is unchecked: only the size can fail
    with pytest.raises(InvalidRecord, match="exceeds"):
        validator.validate(NAME_KEY, entry.SerializeToString(), NOW)
    for value in (b"", b"\xff\xff\xff", b"garbage"):
        with pytest.raises(InvalidRecord):
            validator.validate(NAME_KEY, value, NOW)
    for key in (b"/ipns/", b"/ipns/not-a-peer-id"):
        with pytest.raises(InvalidRecord):
            validator.validate(key, big, NOW)
    # A sha2-256 (RSA) name cannot inline its key: without pubKey there is none to check.
    rsa_key, _ = rsa_pk_record()
    with pytest.raises(InvalidRecord, match="public key"):
        validator.validate(b"/ipns/" + rsa_key[4:], big, NOW)


@settings(deadline=None, max_examples=200)
@given(st.binary(max_size=300), st.integers(0, 400), st.binary(min_size=1, max_size=4))
def test_ipns_mutations_never_crash(garbage: bytes, pos: int, patch: bytes) -> None:
    value = _record()
    mutated = value[:pos] + patch + value[pos + len(patch) :]
    for candidate in (garbage, mutated):
        try:
            validator.validate(NAME_KEY, candidate, NOW)
        except InvalidRecord:
            pass
        validator.select(NAME_KEY, [candidate, value])


# -- /ipns/ select ----------------------------------------------------------------------------


def test_ipns_select_follows_boxo_order() -> None:
    r1 = _record(sequence=1, expires_at=NOW + 3600)
    r2 = _record(sequence=2, expires_at=NOW + 3600)
    r3 = _record(sequence=3, expires_at=NOW + 3600)
    r4 = _record(sequence=3, expires_at=NOW + 7200)  # same sequence, later EOL
    r5 = _record(sequence=4, expires_at=NOW + 60)  # highest sequence beats a later EOL
    for best, pool in ((r2, [r1, r2]), (r3, [r1, r2, r3]), (r4, [r1, r3, r4]), (r5, [r4, r5])):
        for order in itertools.permutations(pool):
            assert order[validator.select(NAME_KEY, list(order))] == best


def test_ipns_select_v2_beats_v1_only_and_ties_go_to_larger_bytes() -> None:
    v2 = _record(sequence=1)
    v1_only = _entry(_record(sequence=5))
    v1_only.ClearField("signatureV2")
    assert validator.select(NAME_KEY, [v1_only.SerializeToString(), v2]) == 1
    a = _record(sequence=3, ttl_ns=1)
    b = _record(sequence=3, ttl_ns=2)
    larger = max(a, b)
    assert [a, b][validator.select(NAME_KEY, [a, b])] == larger
    assert [b, a][validator.select(NAME_KEY, [b, a])] == larger
    assert validator.select(NAME_KEY, [b"garbage", v2]) == 1
    with pytest.raises(InvalidRecord):
        IpnsValidator().select(NAME_KEY, [])


# -- DAG-CBOR -------------------------------------------------------------------------------


def test_cbor_known_answers() -> None:
    # RFC 8949 appendix A and the ipld dag-cbor fixtures.
    vectors: list[tuple[Any, str]] = [
        (0, "00"),
        (23, "17"),
        (24, "1818"),
        (1000, "1903e8"),
        (2**32, "1b0000000100000000"),
        (2**64 - 1, "1bffffffffffffffff"),
        (-1, "20"),
        (-1000, "3903e7"),
        (-(2**64), "3bffffffffffffffff"),
        (b"", "40"),
        (b"\x01\x02\x03\x04", "4401020304"),
        ("IETF", "6449455446"),
        ("\u00fc", "62c3bc"),
        ([1, [2, 3]], "8201820203"),
        ([2], "8102"),
        (False, "f4"),
        (True, "f5"),
        (None, "f6"),
        (1.1, "fb3ff199999999999a"),
        ({"a": 1, "bb": [2]}, "a2616101626262810 2".replace(" ", "")),
        ({"bb": 1, "a": 2}, "a2616102626262 01".replace(" ", "")),  # shorter key first
        (cbor.Link(b"\x01\x55"), "d82a4300 0155".replace(" ", "")),
    ]
    for value, hex_ in vectors:
        assert cbor.encode(value).hex() == hex_, value
        assert cbor.decode(bytes.fromhex(hex_)) == value
    # Non-canonical but well-formed input still decodes (the signature covers the bytes).
    assert cbor.decode(bytes.fromhex("1b0000000000000001")) == 1
    assert cbor.decode(bytes.fromhex("f93e00")) == 1.5  # half precision
    assert cbor.decode(bytes.fromhex("fa47c35000")) == 100000.0  # single precision


@pytest.mark.parametrize(
    "hex_",
    [
        "bf",  # indefinite map
        "5f4100ff",  # indefinite bytes
        "9f01ff",  # indefinite array
        "1c",  # reserved additional info
        "a10102",  # integer map key
        "a2616101616102",  # duplicate key
        "c11a514b67b0",  # tag 1 (epoch time) is not DAG-CBOR
        "d82a4101",  # CID link without the 0x00 prefix
        "d82a01",  # CID link that is not bytes
        "f7",  # undefined
        "e0",  # simple value 0
        "f97e00",  # NaN
        "fb7ff0000000000000",  # infinity
        "0000",  # trailing bytes
        "",  # nothing
        "5affffffff",  # string longer than the input
        "9bffffffffffffffff",  # array claiming 2^64-1 items
        "bbffffffffffffffff",  # map claiming 2^64-1 entries
        "62c3",  # truncated text
        "62ff41",  # text that is not UTF-8
        "81" * 17 + "00",  # deeper than MAX_DEPTH
        "99ffff" + "00" * 0xFFFF,  # more than MAX_ITEMS items
    ],
)
def test_cbor_strictness(hex_: str) -> None:
    with pytest.raises(cbor.CborError):
        cbor.decode(bytes.fromhex(hex_))


def test_cbor_encoder_refuses_what_dag_cbor_cannot_hold() -> None:
    for value in (math.nan, math.inf, {1: 2}, object(), 2**64, -(2**64) - 1):
        with pytest.raises(cbor.CborError):
            cbor.encode(value)


_cbor_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**64), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.binary(max_size=20)
    | st.text(max_size=10)
    | st.binary(max_size=8).map(cbor.Link),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=20,
)


@given(_cbor_values)
def test_cbor_round_trip(value: Any) -> None:
    encoded = cbor.encode(value)
    assert cbor.decode(encoded) == value
    assert cbor.encode(cbor.decode(encoded)) == encoded  # canonical: one encoding per value


@settings(max_examples=500)
@given(st.binary(max_size=200))
def test_cbor_fuzz(data: bytes) -> None:
    try:
        cbor.decode(data)
    except cbor.CborError:
        pass
