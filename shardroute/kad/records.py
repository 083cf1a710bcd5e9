"""Record validators per namespace (go-libp2p-record, boxo ipns): `/pk/` and `/ipns/`.

A validator says whether a value may be stored or returned for a key, and `select` picks the
best of several valid values (for GET_VALUE quorum and entry correction).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from google.protobuf.message import DecodeError

from shardroute.errors import InvalidKey, InvalidPeerId, InvalidRecord
from shardroute.identity.keys import Ed25519PrivateKey, PublicKey
from shardroute.identity.peer_id import PeerId
from shardroute.kad import cbor
from shardroute.kad.messages import format_rfc3339, parse_rfc3339
from shardroute.pb import ipns_pb2

IPNS_MAX_RECORD = 10 * 1024
IPNS_SIGNATURE_PREFIX = b"ipns-signature:"


class Validator(Protocol):
    def validate(self, key: bytes, value: bytes, now: float) -> None: ...

    def select(self, key: bytes, values: Sequence[bytes]) -> int: ...


def split_key(key: bytes) -> tuple[str, bytes]:
    """`/<namespace>/<rest>` → (namespace, rest)."""
    if not key.startswith(b"/"):
        raise InvalidRecord("record key does not start with '/'")
    namespace, sep, rest = key[1:].partition(b"/")
    if not sep or not namespace:
        raise InvalidRecord("record key has no namespace")
    try:
        return namespace.decode("ascii"), rest
    except UnicodeDecodeError:
        raise InvalidRecord("record namespace is not ASCII") from None


class PublicKeyValidator:
    """`/pk/<peer id>` holds the key that hashes to that peer ID; all valid values are equal."""

    def validate(self, key: bytes, value: bytes, now: float) -> None:
        namespace, rest = split_key(key)
        if namespace != "pk":
            raise InvalidRecord("not a /pk/ key")
        try:
            peer = PeerId.from_bytes(rest)
            public = PublicKey.from_protobuf(value)
        except (InvalidPeerId, InvalidKey) as exc:
            raise InvalidRecord(f"/pk/ record: {exc}") from exc
        if not peer.matches_public_key(public):
            raise InvalidRecord("/pk/ record: the key does not hash to the peer ID")

    def select(self, key: bytes, values: Sequence[bytes]) -> int:
        if not values:
            raise InvalidRecord("no values to select from")
        return 0


@dataclass(frozen=True, slots=True)
class IpnsEntry:
    value: bytes
    sequence: int
    validity: bytes
    validity_type: int
    ttl: int
    has_v2: bool
    raw: bytes


def _parse_ipns(rest: bytes, value: bytes, now: float) -> IpnsEntry:
    if len(value) > IPNS_MAX_RECORD:
        raise InvalidRecord(f"IPNS record of {len(value)} bytes exceeds 10 KiB")
    entry = ipns_pb2.IpnsEntry()
    try:
        entry.ParseFromString(value)
    except (DecodeError, ValueError) as exc:
        raise InvalidRecord(f"undecodable IPNS record: {exc}") from exc
    if not entry.HasField("signatureV2") or not entry.HasField("data"):
        raise InvalidRecord("IPNS record lacks signatureV2 or data")
    try:
        name = PeerId.from_bytes(rest)
    except InvalidPeerId as exc:
        raise InvalidRecord(f"IPNS name is not a peer ID: {exc}") from exc
    try:
        public = (
            PublicKey.from_protobuf(entry.pubKey)
            if entry.HasField("pubKey")
            else name.extract_public_key()
        )
    except InvalidKey as exc:
        raise InvalidRecord(f"IPNS public key: {exc}") from exc
    if public is None or not name.matches_public_key(public):
        raise InvalidRecord("IPNS public key does not belong to the name")
    if not public.verify(IPNS_SIGNATURE_PREFIX + entry.data, entry.signatureV2):
        raise InvalidRecord("IPNS signatureV2 is invalid")
    try:
        data = cbor.decode(entry.data)
    except cbor.CborError as exc:
        raise InvalidRecord(f"IPNS data is not valid CBOR: {exc}") from exc
    if not isinstance(data, Mapping):
        raise InvalidRecord("IPNS data is not a map")
    fields = {"Value": bytes, "Validity": bytes, "ValidityType": int, "Sequence": int, "TTL": int}
    for field_name, kind in fields.items():
        if not isinstance(data.get(field_name), kind):
            raise InvalidRecord(f"IPNS data lacks a valid {field_name}")
    # Any V1 copies in the protobuf must agree with the signed CBOR.
    for pb_field, cbor_field in (
        ("value", "Value"),
        ("validity", "Validity"),
        ("validityType", "ValidityType"),
        ("sequence", "Sequence"),
        ("ttl", "TTL"),
    ):
        if entry.HasField(pb_field) and getattr(entry, pb_field) != data[cbor_field]:
            raise InvalidRecord(f"IPNS field {pb_field} disagrees with the signed data")
    if data["ValidityType"] != 0:
        raise InvalidRecord(f"unknown IPNS validity type {data['ValidityType']}")
    expiry = parse_rfc3339(data["Validity"].decode("utf-8", "replace"))
    if expiry is None:
        raise InvalidRecord("IPNS validity is not an RFC 3339 time")
    if expiry <= now:
        raise InvalidRecord("IPNS record has expired")
    return IpnsEntry(
        data["Value"],
        data["Sequence"],
        data["Validity"],
        data["ValidityType"],
        data["TTL"],
        True,
        value,
    )


class IpnsValidator:
    def validate(self, key: bytes, value: bytes, now: float) -> None:
        namespace, rest = split_key(key)
        if namespace != "ipns":
            raise InvalidRecord("not an /ipns/ key")
        _parse_ipns(rest, value, now)

    def select(self, key: bytes, values: Sequence[bytes]) -> int:
        """boxo's order: V2 signature, then higher sequence, later validity, larger bytes.
        Values that fail to parse lose to any that parse."""
        if not values:
            raise InvalidRecord("no values to select from")
        split_key(key)  # refuses a malformed key

        def rank(value: bytes) -> tuple[int, int, float, bytes]:
            entry = ipns_pb2.IpnsEntry()
            try:
                entry.ParseFromString(value)
                data = cbor.decode(entry.data)
                expiry = parse_rfc3339(data["Validity"].decode()) or 0.0
                return (
                    1 if entry.HasField("signatureV2") else 0,
                    int(data["Sequence"]),
                    expiry,
                    value,
                )
            except (DecodeError, ValueError, KeyError, TypeError, AttributeError, cbor.CborError):
                return (-1, -1, 0.0, value)

        ranks = [rank(v) for v in values]
        return max(range(len(values)), key=lambda i: ranks[i])


class NamespacedValidator:
    def __init__(self, validators: Mapping[str, Validator]) -> None:
        self._validators = dict(validators)

    def _for(self, key: bytes) -> Validator:
        namespace, _ = split_key(key)
        validator = self._validators.get(namespace)
        if validator is None:
            raise InvalidRecord(f"no validator for namespace {namespace!r}")
        return validator

    def validate(self, key: bytes, value: bytes, now: float) -> None:
        self._for(key).validate(key, value, now)

    def select(self, key: bytes, values: Sequence[bytes]) -> int:
        return self._for(key).select(key, values)


def make_default_validator() -> NamespacedValidator:
    return NamespacedValidator({"pk": PublicKeyValidator(), "ipns": IpnsValidator()})


def build_ipns_record(
    key: Ed25519PrivateKey,
    value: bytes,
    *,
    sequence: int,
    expires_at: float,
    ttl_ns: int = 3_600_000_000_000,
) -> tuple[bytes, bytes]:
    """A signed V1+V2 IPNS record for our key: returns (DHT key, record bytes)."""
    validity = format_rfc3339(expires_at).encode()
    data = cbor.encode(
        {
            "Value": value,
            "Validity": validity,
            "ValidityType": 0,
            "Sequence": sequence,
            "TTL": ttl_ns,
        }
    )
    entry = ipns_pb2.IpnsEntry()
    entry.value = value
    entry.validityType = ipns_pb2.IpnsEntry.EOL
    entry.validity = validity
    entry.sequence = sequence
    entry.ttl = ttl_ns
    entry.data = data
    entry.signatureV2 = key.sign(IPNS_SIGNATURE_PREFIX + data)
    # V1 signature (over value ‖ validity ‖ "EOL") for old readers.
    entry.signatureV1 = key.sign(value + validity + b"EOL")
    peer = PeerId.from_public_key(key.public_key)
    return b"/ipns/" + peer.raw, entry.SerializeToString()


def pk_record(key: PublicKey) -> tuple[bytes, bytes]:
    return b"/pk/" + PeerId.from_public_key(key).raw, key.to_protobuf()
