"""Kademlia wire messages (libp2p kad-dht, go-libp2p-kad-dht pb/dht.proto) and their limits.

Protobuf objects never leave this module. A Peer entry with an unusable ID is dropped alone, and
so is an unusable address, as go and rust do: one bad entry never spoils a message.
"""

from __future__ import annotations

import datetime as dt
import enum
import functools
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from multiaddr import Multiaddr

from shardroute import limits
from shardroute.addrs import multiaddr_to_bytes, sanitize_peer_addrs
from shardroute.errors import InvalidPeerId, KadMessageError, LocalProtocolError
from shardroute.identity.peer_id import PeerId
from shardroute.pb import dht_pb2
from shardroute.protocol.protobuf import parse_message
from shardroute.protocol.varint import encode_uvarint

# go sends 1; rust 10 or 9. Nobody reads it.
CLUSTER_LEVEL = 1
# Entries past these caps are dropped on decode (go truncates closer peers at 2k the same way).
MAX_CLOSER_PEERS = limits.KAD_MAX_CLOSER_PEERS
MAX_PROVIDER_PEERS = limits.KAD_MAX_PROVIDER_PEERS
MAX_ADDRS_PER_PEER = limits.KAD_MAX_ADDRS_PER_PEER
# Raw addresses looked at per entry before sanitising (bad ones are dropped, not counted).
_MAX_RAW_ADDRS_PER_PEER = 4 * MAX_ADDRS_PER_PEER


class MessageType(enum.IntEnum):
    PUT_VALUE = 0
    GET_VALUE = 1
    ADD_PROVIDER = 2
    GET_PROVIDERS = 3
    FIND_NODE = 4
    PING = 5


# `MessageType(n)` goes through Enum.__new__ (about a microsecond); a decode does it each time.
_MESSAGE_TYPES: dict[int, MessageType] = {kind.value: kind for kind in MessageType}


@dataclass(frozen=True, slots=True)
class PeerInfo:
    """A peer as DHT messages carry it. `connected` is go's CONNECTED hint, nothing more."""

    peer_id: PeerId
    addrs: tuple[Multiaddr, ...] = ()
    connected: bool = False


@dataclass(frozen=True, slots=True)
class ValueRecord:
    key: bytes
    value: bytes
    # RFC 3339 as the receiver stamped it; incoming values are ignored (kad-dht.md §11.8).
    time_received: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class KadMessage:
    type: MessageType
    key: bytes = b""
    record: ValueRecord | None = None
    closer_peers: tuple[PeerInfo, ...] = ()
    provider_peers: tuple[PeerInfo, ...] = ()
    # How many Peer entries decoding dropped (bad ID), and how many addresses it left unread
    # past MAX_ADDRS_PER_PEER, for logs and metrics.
    dropped_peers: int = field(default=0, compare=False)
    addrs_over_cap: int = field(default=0, compare=False)


def _peer_entry_bytes(info: PeerInfo) -> bytes:
    """`info` as an encoded Peer entry, kept: our answers repeat the same table peers."""
    data = _encoded_peer_entries.get(info)
    if data is None:
        entry = dht_pb2.Message.Peer(id=info.peer_id.raw)
        entry.addrs.extend(multiaddr_to_bytes(a) for a in info.addrs[:MAX_ADDRS_PER_PEER])
        entry.connection = (
            dht_pb2.Message.CONNECTED if info.connected else dht_pb2.Message.NOT_CONNECTED
        )
        data = entry.SerializeToString()
        if len(data) <= limits.KAD_DECODED_PEER_ENTRY_BYTES:
            if len(_encoded_peer_entries) >= limits.KAD_DECODED_PEER_ENTRIES:
                del _encoded_peer_entries[next(iter(_encoded_peer_entries))]
            _encoded_peer_entries[info] = data
    return data


_encoded_peer_entries: dict[PeerInfo, bytes] = {}


def encode_message(msg: KadMessage, *, max_size: int = limits.KAD_MAX_MESSAGE) -> bytes:
    """The protobuf body, unframed. Peers carry at most MAX_ADDRS_PER_PEER addresses.
    Raises LocalProtocolError when the body would exceed `max_size`."""
    pb = dht_pb2.Message()
    pb.type = int(msg.type)  # type: ignore[assignment]
    pb.clusterLevelRaw = CLUSTER_LEVEL
    if msg.key:
        pb.key = msg.key
    if msg.record is not None:
        pb.record.key = msg.record.key
        pb.record.value = msg.record.value
        if msg.record.time_received:
            pb.record.timeReceived = msg.record.time_received
    # Merging an entry's bytes costs half of setting its fields; the bytes sent are the same.
    for info in msg.closer_peers:
        pb.closerPeers.add().MergeFromString(_peer_entry_bytes(info))
    for info in msg.provider_peers:
        pb.providerPeers.add().MergeFromString(_peer_entry_bytes(info))
    body = pb.SerializeToString()
    if len(body) > max_size:
        raise LocalProtocolError(f"DHT message of {len(body)} bytes exceeds {max_size}")
    return body


def _peers(
    entries: Iterable[dht_pb2.Message.Peer], cap: int
) -> tuple[tuple[PeerInfo, ...], int, int]:
    """Usable entries (first `cap`), how many were dropped for a bad peer ID, and how many
    addresses were past the per-peer cap."""
    out: list[PeerInfo] = []
    dropped = over_cap = 0
    for entry in entries:
        if len(out) >= cap:
            break
        data = entry.SerializeToString()
        if len(data) <= limits.KAD_DECODED_PEER_ENTRY_BYTES:
            info, extra = _known_peer_entry(data)
        else:
            info, extra = _peer_entry(entry)
        over_cap += extra
        if info is None:
            dropped += 1
        else:
            out.append(info)
    return tuple(out), dropped, over_cap


# Checking an ID and its addresses was a tenth of a lookup's CPU, for entries that repeat.
@functools.lru_cache(maxsize=limits.KAD_DECODED_PEER_ENTRIES)
def _known_peer_entry(data: bytes) -> tuple[PeerInfo | None, int]:
    return _peer_entry(dht_pb2.Message.Peer.FromString(data))


def _peer_entry(entry: dht_pb2.Message.Peer) -> tuple[PeerInfo | None, int]:
    """The entry with its usable addresses (None when its peer ID is bad), and how many
    addresses it had past the cap."""
    over_cap = max(0, len(entry.addrs) - MAX_ADDRS_PER_PEER)
    try:
        peer = PeerId.from_bytes(entry.id)
    except InvalidPeerId:
        return None, over_cap
    raw = entry.addrs[:_MAX_RAW_ADDRS_PER_PEER]
    addrs = tuple(sanitize_peer_addrs(peer, raw)[:MAX_ADDRS_PER_PEER])
    return PeerInfo(peer, addrs, entry.connection == dht_pb2.Message.CONNECTED), over_cap


def decode_message(body: bytes) -> KadMessage:
    """Parse one unframed body. Raises KadMessageError for an oversized or undecodable body
    or an unknown type; Peer entries with a bad ID and bad addresses are dropped one by one
    (`dropped_peers` counts the entries, `addrs_over_cap` the addresses past the cap).
    Unknown fields are ignored."""
    if len(body) > limits.KAD_MAX_MESSAGE:
        raise KadMessageError(f"DHT message of {len(body)} bytes exceeds the 4 MiB limit")
    pb = parse_message(dht_pb2.Message, body, KadMessageError, "DHT message")
    kind = _MESSAGE_TYPES.get(pb.type)
    if kind is None:
        raise KadMessageError(f"unknown DHT message type {pb.type}")
    record = None
    if pb.HasField("record"):
        record = ValueRecord(pb.record.key, pb.record.value, pb.record.timeReceived)
    closer, dropped_closer, closer_over_cap = _peers(pb.closerPeers, MAX_CLOSER_PEERS)
    providers, dropped_providers, providers_over_cap = _peers(pb.providerPeers, MAX_PROVIDER_PEERS)
    return KadMessage(
        type=kind,
        key=pb.key,
        record=record,
        closer_peers=closer,
        provider_peers=providers,
        dropped_peers=dropped_closer + dropped_providers,
        addrs_over_cap=closer_over_cap + providers_over_cap,
    )


def encoded_size(msg: KadMessage) -> int:
    """`len(encode_message(msg))`, counted from the kept entry encodings rather than built."""
    size = len(encode_message(replace(msg, closer_peers=(), provider_peers=())))
    for info in (*msg.closer_peers, *msg.provider_peers):
        entry = len(_peer_entry_bytes(info))
        # Fields 8 and 9: a one-byte tag, the length as a varint, the entry.
        size += 1 + len(encode_uvarint(entry)) + entry
    return size


def fit_reply(msg: KadMessage, limit: int = limits.KAD_PORTABLE_MESSAGE) -> KadMessage:
    """Trim a reply until it encodes within `limit` (rust-libp2p reads 16 KiB by default):
    at most 4 addresses per peer first, then drop the longer list's tail (providers or closer
    peers) a quarter at a time. Entries keep their order, so a FIND_NODE target put first
    stays. A record is never trimmed: a reply that is too big without any peers is returned
    as it is (it still fits go's and js's 4 MiB)."""
    if encoded_size(msg) <= limit:
        return msg

    def trim(peers: tuple[PeerInfo, ...], n: int) -> tuple[PeerInfo, ...]:
        return tuple(replace(p, addrs=p.addrs[:n]) for p in peers)

    msg = replace(
        msg, closer_peers=trim(msg.closer_peers, 4), provider_peers=trim(msg.provider_peers, 4)
    )
    while encoded_size(msg) > limit and (msg.provider_peers or msg.closer_peers):
        if len(msg.provider_peers) > len(msg.closer_peers) or not msg.closer_peers:
            msg = replace(
                msg, provider_peers=msg.provider_peers[: len(msg.provider_peers) * 3 // 4]
            )
        else:
            msg = replace(msg, closer_peers=msg.closer_peers[: len(msg.closer_peers) * 3 // 4])
    return msg


# Lenient: any fraction length (extra digits past nanoseconds are cut), `Z` or an offset.
_RFC3339 = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt ]([0-9]{2}):([0-9]{2}):([0-9]{2})"
    r"(?:\.([0-9]+))?(Z|z|[+-][0-9]{2}:[0-9]{2})",
    re.ASCII,
)
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def format_rfc3339(wall: float) -> str:
    """go's time.RFC3339Nano in UTC: fraction without trailing zeros, omitted when zero.
    Raises OverflowError outside the years 1 to 9999."""
    seconds = math.floor(wall)
    nanos = round((wall - seconds) * 1e9)
    if nanos >= 1_000_000_000:
        seconds, nanos = seconds + 1, 0
    t = _EPOCH + dt.timedelta(seconds=seconds)
    base = f"{t.year:04d}-{t.month:02d}-{t.day:02d}T{t.hour:02d}:{t.minute:02d}:{t.second:02d}"
    fraction = f".{nanos:09d}".rstrip("0") if nanos else ""
    return f"{base}{fraction}Z"


def parse_rfc3339(text: str) -> float | None:
    """Wall seconds, or None for anything that is not an RFC 3339 date-time."""
    m = _RFC3339.fullmatch(text.strip())
    if m is None:
        return None
    year, month, day, hour, minute, second, fraction, zone = m.groups()
    try:
        if zone in ("Z", "z"):
            tz = dt.UTC
        else:
            sign = 1 if zone[0] == "+" else -1
            tz = dt.timezone(sign * dt.timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6])))
        moment = dt.datetime(
            int(year), int(month), int(day), int(hour), int(minute), int(second), tzinfo=tz
        )
    except (ValueError, OverflowError):
        return None
    nanos = int(fraction[:9].ljust(9, "0")) if fraction else 0
    return moment.timestamp() + nanos / 1e9
