"""Record validators per namespace (kad-dht.md §7; go-libp2p-record, boxo ipns): `/pk/`, `/ipns/`.

A validator says whether a value may be stored or returned under a key (InvalidRecord if not),
and `select` picks the best of several values (GET_VALUE quorum, entry correction, and
PUT_VALUE's "is the new record better than ours"). Unknown namespaces are refused, as go and js
do. Time is an argument: `now` is wall-clock seconds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from google.protobuf.message import DecodeError

from shardroute import limits
from shardroute.errors import InvalidKey, InvalidPeerId, InvalidRecord
from shardroute.identity.keys import Ed25519PrivateKey, PublicKey
from shardroute.identity.peer_id import PeerId
from shardroute.kad import cbor
from shardroute.kad.messages import format_rfc3339, parse_rfc3339
from shardroute.pb import ipns_pb2
from shardroute.protocol.protobuf import parse_message

IPNS_MAX_RECORD = limits.IPNS_MAX_RECORD
IPNS_SIGNATURE_PREFIX = b"ipns-signature:"
IPNS_VALIDITY_EOL = 0
_UINT64_LIMIT = 1 << 64


class Validator(Protocol):
    def validate(self, key: bytes, value: bytes, now: float) -> None:
        """Raise InvalidRecord unless `value` may be stored or returned under `key` at `now`."""
        ...

    def select(self, key: bytes, values: Sequence[bytes]) -> int:
        """Index of the best of `values` (validated by the caller); InvalidRecord if empty."""
        ...


def split_key(key: bytes) -> tuple[str, bytes]:
    """`/<namespace>/<rest>` → (namespace, rest), as go-libp2p-record SplitKey."""
    if not key.startswith(b"/"):
        raise InvalidRecord("record key does not start with '/'")
    namespace, sep, rest = key[1:].partition(b"/")
    if not sep or not namespace:
        raise InvalidRecord("record key has no namespace")
    try:
        return namespace.decode("ascii"), rest
    except UnicodeDecodeError:
        raise InvalidRecord("record namespace is not ASCII") from None


def _check_namespace(key: bytes, expected: str) -> bytes:
    namespace, rest = split_key(key)
    if namespace != expected:
        raise InvalidRecord(f"not a /{expected}/ key")
    return rest


class PublicKeyValidator:
    """`/pk/<peer id>` holds the key that hashes to that peer ID; all valid values are equal."""

    def validate(self, key: bytes, value: bytes, now: float) -> None:
        rest = _check_namespace(key, "pk")
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
class IpnsRecord:
    """The signed (V2, DAG-CBOR) content of a valid IPNS record."""

    value: bytes
    sequence: int
    validity: bytes  # RFC 3339 text as signed
    expires_at: float  # `validity` in wall seconds
    ttl_ns: int
    public_key: PublicKey


def _cbor_uint(data: Mapping[str, Any], name: str) -> int:
    value = data.get(name)
    if type(value) is not int or not 0 <= value < _UINT64_LIMIT:
        raise InvalidRecord(f"IPNS data lacks a valid {name}")
    return value


def _cbor_bytes(data: Mapping[str, Any], name: str) -> bytes:
    value = data.get(name)
    if not isinstance(value, bytes):
        raise InvalidRecord(f"IPNS data lacks a valid {name}")
    return value


def decode_ipns_record(key: bytes, value: bytes, now: float) -> IpnsRecord:
    """Validate an `/ipns/<peer id>` record as boxo does and return its signed content."""
    rest = _check_namespace(key, "ipns")
    if len(value) > IPNS_MAX_RECORD:
        raise InvalidRecord(f"IPNS record of {len(value)} bytes exceeds {IPNS_MAX_RECORD}")
    try:
        name = PeerId.from_bytes(rest)
    except InvalidPeerId as exc:
        raise InvalidRecord(f"IPNS name is not a peer ID: {exc}") from exc
    entry = parse_message(ipns_pb2.IpnsEntry, value, InvalidRecord, "IPNS record")
    if not entry.signatureV2 or not entry.data:
        raise InvalidRecord("IPNS record lacks signatureV2 or data")
    # The embedded key wins if present (boxo ExtractPublicKey); it must hash to the name.
    if entry.pubKey:
        try:
            public: PublicKey | None = PublicKey.from_protobuf(entry.pubKey)
        except InvalidKey as exc:
            raise InvalidRecord(f"IPNS public key: {exc}") from exc
    else:
        public = name.extract_public_key()
    if public is None:
        raise InvalidRecord("IPNS record has no public key and the name does not inline one")
    if not name.matches_public_key(public):
        raise InvalidRecord("IPNS public key does not belong to the name")
    if not public.verify(IPNS_SIGNATURE_PREFIX + entry.data, entry.signatureV2):
        raise InvalidRecord("IPNS signatureV2 is invalid")
    try:
        data = cbor.decode(entry.data)
    except cbor.CborError as exc:
        raise InvalidRecord(f"IPNS data is not valid DAG-CBOR: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidRecord("IPNS data is not a map")
    signed_value = _cbor_bytes(data, "Value")
    validity = _cbor_bytes(data, "Validity")
    validity_type = _cbor_uint(data, "ValidityType")
    sequence = _cbor_uint(data, "Sequence")
    ttl = _cbor_uint(data, "TTL")
    # boxo: once a V1 value or signature is present, every V1 field must equal the signed one
    # (an absent field reads as its default), so an old reader sees what V2 signed.
    if entry.signatureV1 or entry.value:
        v1 = (entry.value, entry.validity, entry.validityType, entry.sequence, entry.ttl)
        if v1 != (signed_value, validity, validity_type, sequence, ttl):
            raise InvalidRecord("IPNS V1 fields disagree with the signed data")
    if validity_type != IPNS_VALIDITY_EOL:
        raise InvalidRecord(f"unknown IPNS validity type {validity_type}")
    expires_at = parse_rfc3339(validity.decode("utf-8", "replace"))
    if expires_at is None:
        raise InvalidRecord("IPNS validity is not an RFC 3339 time")
    if now > expires_at:
        raise InvalidRecord("IPNS record has expired")
    return IpnsRecord(signed_value, sequence, validity, expires_at, ttl, public)


class IpnsValidator:
    def validate(self, key: bytes, value: bytes, now: float) -> None:
        decode_ipns_record(key, value, now)

    def select(self, key: bytes, values: Sequence[bytes]) -> int:
        """boxo's order: a V2 signature, then higher sequence, later validity, larger bytes.
        Values that do not parse lose to any that do (boxo would fail the whole select)."""
        if not values:
            raise InvalidRecord("no values to select from")
        _check_namespace(key, "ipns")
        ranks = [_ipns_rank(v) for v in values]
        return max(range(len(values)), key=lambda i: ranks[i])


def _ipns_rank(value: bytes) -> tuple[int, int, float, bytes]:
    unusable = (-1, -1, 0.0, value)
    entry = ipns_pb2.IpnsEntry()
    try:
        entry.ParseFromString(value)
        data = cbor.decode(entry.data)
    except (DecodeError, ValueError):  # CborError is a ValueError
        return unusable
    if not isinstance(data, dict):
        return unusable
    sequence, validity = data.get("Sequence"), data.get("Validity")
    if type(sequence) is not int or not isinstance(validity, bytes):
        return unusable
    expires_at = parse_rfc3339(validity.decode("utf-8", "replace"))
    if expires_at is None:
        return unusable
    return (1 if entry.HasField("signatureV2") else 0, sequence, expires_at, value)


class NamespacedValidator:
    """Dispatches on the key's namespace; a namespace without a validator is invalid."""

    def __init__(self, validators: Mapping[str, Validator]) -> None:
        self._validators = dict(validators)

    @property
    def namespaces(self) -> frozenset[str]:
        return frozenset(self._validators)

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
    """go's and js's default: `/pk/` and `/ipns/`, nothing else."""
    return NamespacedValidator({"pk": PublicKeyValidator(), "ipns": IpnsValidator()})


def build_ipns_record(
    key: Ed25519PrivateKey,
    value: bytes,
    *,
    sequence: int,
    expires_at: float,
    ttl_ns: int = 3_600_000_000_000,
    v1_compatible: bool = True,
    embed_public_key: bool = False,
) -> tuple[bytes, bytes]:
    """A signed IPNS record for our key, as boxo NewRecord writes it: returns
    (DHT key `/ipns/<peer id>`, record bytes). Ed25519 names inline their key, so embedding
    it is optional; V1 fields and signature are for readers older than go-ipfs 0.9."""
    validity = format_rfc3339(expires_at).encode()
    data = cbor.encode(
        {
            "Value": value,
            "Validity": validity,
            "ValidityType": IPNS_VALIDITY_EOL,
            "Sequence": sequence,
            "TTL": ttl_ns,
        }
    )
    entry = ipns_pb2.IpnsEntry()
    entry.data = data
    entry.signatureV2 = key.sign(IPNS_SIGNATURE_PREFIX + data)
    if v1_compatible:
        entry.value = value
        entry.validityType = ipns_pb2.IpnsEntry.EOL
        entry.validity = validity
        entry.sequence = sequence
        entry.ttl = ttl_ns
        # V1 signs value ‖ validity ‖ the validity type's name (go prints the enum: "EOL").
        entry.signatureV1 = key.sign(value + validity + b"EOL")
    if embed_public_key:
        entry.pubKey = key.public_key.to_protobuf()
    peer = PeerId.from_public_key(key.public_key)
    return b"/ipns/" + peer.raw, entry.SerializeToString()


def pk_record(key: PublicKey) -> tuple[bytes, bytes]:
    """(`/pk/<peer id>`, serialized public key)."""
    return b"/pk/" + PeerId.from_public_key(key).raw, key.to_protobuf()
