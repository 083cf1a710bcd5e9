"""The Delegated Routing V1 HTTP API (specs.ipfs.tech/routing/http-routing-v1) without IO:
which route a request names, what it may be answered in, the peer records, the address and
protocol filters (IPIP-484) and the headers. `api/routing_http.py` runs it over h11 and anyio.

Values follow the spec and, where the spec leaves a choice, boxo's `routing/http/server`, the
server kubo and someguy run: 200 with zero records (never 404, IPIP-513), 400 for a bad CID or
peer ID, the same Cache-Control values.
"""

from __future__ import annotations

import email.utils
import enum
import hmac
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote, urlsplit

from multiaddr import Multiaddr

from shardroute import limits
from shardroute.addrs import addr_text, split_p2p
from shardroute.content import ContentId
from shardroute.errors import InvalidCid, InvalidPeerId
from shardroute.identity.peer_id import IDENTITY_CODE, PeerId

PREFIX = "/routing/v1/"
JSON_TYPE = "application/json"
NDJSON_TYPE = "application/x-ndjson"
TEXT_TYPE = "text/plain; charset=utf-8"
# "The application/json responses SHOULD be limited to 100 providers" (spec 4.1.5).
JSON_MAX_RECORDS = 100
# A stream has no cap in the spec (boxo: none); ours bounds one lookup's work and buffer, as
# the gRPC FindProviders cap does (api/service.py MAX_FIND_COUNT).
NDJSON_MAX_RECORDS = 1000
# boxo server.go: 5 min with results, 15 s without, stale for 48 h (the Amino provider TTL).
MAX_AGE_FOUND = 300
MAX_AGE_EMPTY = 15
MAX_STALE = 48 * 3600
# IPIP-484: transfer protocol names are at most 63 characters; a filter list is short.
MAX_FILTER_NAMES = 32
MAX_FILTER_NAME_LEN = 63
# CORS: what every answer allows, and how long a browser may keep a preflight (1 day).
ALLOW_METHODS = "GET, OPTIONS"
ALLOW_HEADERS = "Accept, Authorization, Content-Type"
PREFLIGHT_MAX_AGE = 86400

Headers = list[tuple[str, str]]


class Format(enum.Enum):
    JSON = JSON_TYPE
    NDJSON = NDJSON_TYPE


class Route(enum.Enum):
    """Metrics labels: what a request asked for (`other` for anything we do not know)."""

    PROVIDERS = "providers"
    PEERS = "peers"
    IPNS = "ipns"
    CLOSEST_PEERS = "closest_peers"
    OTHER = "other"


ROUTE_NAMES = tuple(r.value for r in Route)


@dataclass(frozen=True, slots=True)
class Filters:
    """IPIP-484 `filter-addrs` and `filter-protocols` (case-insensitive); empty: no filter."""

    addrs: tuple[str, ...] = ()
    protocols: tuple[str, ...] = ()

    def apply(self, record: PeerRecord) -> PeerRecord | None:
        """The record as the filters leave it, or None when they drop it."""
        if self.protocols and not _protocols_allowed(record.protocols, self.protocols):
            return None
        if not self.addrs or (not record.addrs and "unknown" in map(str.lower, self.addrs)):
            return record
        negative = {n[1:].lower() for n in self.addrs if n.startswith("!")}
        # `unknown` among the positives matches no address (boxo): it only keeps address-less
        # records, above.
        positive = {n.lower() for n in self.addrs if not n.startswith("!")}
        kept = []
        for addr in record.addrs:
            names = {p.name.lower() for p in addr.protocols()}
            if names & negative:
                continue
            if not positive or names & positive:
                kept.append(addr)
        if not kept:
            return None
        return PeerRecord(peer=record.peer, addrs=tuple(kept), protocols=record.protocols)


def _protocols_allowed(have: Sequence[str], wanted: Sequence[str]) -> bool:
    lowered = {p.lower() for p in have}
    return any((w.lower() == "unknown" and not have) or w.lower() in lowered for w in wanted)


@dataclass(frozen=True, slots=True)
class PeerRecord:
    """The spec's "peer" schema: an ID, its multiaddrs (no /p2p/), protocols when known."""

    peer: PeerId
    addrs: tuple[Multiaddr, ...] = ()
    protocols: tuple[str, ...] = ()

    @classmethod
    def of(
        cls, peer: PeerId, addrs: Iterable[Multiaddr], protocols: Iterable[str] = ()
    ) -> PeerRecord:
        """`addrs` without their /p2p/ part, each once, in order."""
        plain: dict[str, Multiaddr] = {}
        for addr in addrs:
            try:
                transport, _ = split_p2p(addr)
            except ValueError:
                continue
            if addr_text(transport) != "/":
                plain.setdefault(addr_text(transport), transport)
        return cls(peer=peer, addrs=tuple(plain.values()), protocols=tuple(sorted(protocols)))

    def to_json(self) -> dict[str, object]:
        # boxo writes IDs in base58 and Helia's client reads them only so; Addrs is always
        # written ([] when unknown: the client then looks the peer up itself).
        out: dict[str, object] = {
            "Schema": "peer",
            "ID": self.peer.to_base58(),
            "Addrs": [addr_text(a) for a in self.addrs],
        }
        if self.protocols:
            out["Protocols"] = list(self.protocols)
        return out


def encode_line(record: PeerRecord) -> bytes:
    """One NDJSON line."""
    return _dumps(record.to_json()) + b"\n"


def encode_body(key: str, records: Sequence[PeerRecord]) -> bytes:
    """The JSON answer: {"Providers": [...]} or {"Peers": [...]}, never null."""
    return _dumps({key: [r.to_json() for r in records]})


def _dumps(value: object) -> bytes:
    # No HTML escaping, no spaces, UTF-8: what boxo writes.
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


# -- requests ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProvidersQuery:
    cid: ContentId
    format: Format
    filters: Filters


@dataclass(frozen=True, slots=True)
class PeersQuery:
    peer: PeerId
    format: Format
    filters: Filters


@dataclass(frozen=True, slots=True)
class Preflight:
    """An OPTIONS request: answered with the CORS headers alone, without authorisation."""


@dataclass(frozen=True, slots=True)
class Refusal:
    status: int
    message: str


Query = ProvidersQuery | PeersQuery
Parsed = Query | Preflight | Refusal


def route_of(target: str) -> Route:
    path = urlsplit(target).path
    if not path.startswith(PREFIX):
        return Route.OTHER
    parts = path[len(PREFIX) :].split("/")
    if parts[0] == "providers":
        return Route.PROVIDERS
    if parts[0] == "peers":
        return Route.PEERS
    if parts[0] == "ipns":
        return Route.IPNS
    if parts[:3] == ["dht", "closest", "peers"]:
        return Route.CLOSEST_PEERS
    return Route.OTHER


def parse_request(method: str, target: str, accept: Sequence[str]) -> Parsed:
    """What `method target` asks for, or why it is refused (400, 404 or 501)."""
    if method == "OPTIONS":
        return Preflight()
    split = urlsplit(target)
    path = split.path
    if not path.startswith(PREFIX):
        return Refusal(404, f"{path}: not found (this server answers under {PREFIX})")
    parts = path[len(PREFIX) :].split("/")
    ours = len(parts) == 2 and parts[0] in ("providers", "peers") and bool(parts[1])
    theirs = (
        parts == ["providers"]  # PUT, deprecated
        or (len(parts) == 2 and parts[0] == "ipns" and bool(parts[1]))
        or (len(parts) == 4 and parts[:3] == ["dht", "closest", "peers"] and bool(parts[3]))
    )
    if not ours and not theirs:
        return Refusal(400, f"{path}: unknown path")  # the spec's code for an unknown path
    if not ours or method != "GET":
        # The spec: 501 for a method or path it defines that a server does not implement.
        return Refusal(501, f"{method} {path}: not implemented by this server")
    try:
        filters = _parse_filters(split.query)
    except ValueError as exc:
        return Refusal(400, str(exc))
    fmt = negotiate(accept)
    text = unquote(parts[1])
    if parts[0] == "providers":
        try:
            cid = ContentId.parse(text)
        except InvalidCid as exc:
            return Refusal(400, f"unable to parse CID: {exc}")
        if len(cid.dht_key) > limits.KAD_MAX_PROVIDER_KEY:
            return Refusal(400, f"CID {text[:100]!r}: its multihash is too long for a DHT key")
        return ProvidersQuery(cid, fmt, filters)
    try:
        return PeersQuery(parse_peer_id(text), fmt, filters)
    except InvalidPeerId as exc:
        return Refusal(400, f"unable to parse peer ID: {exc}")


def parse_peer_id(text: str) -> PeerId:
    """base58 (`12D3KooW…`, `Qm…`) or a libp2p-key CID (`bafz…`, `k51…`); like boxo, a CID of
    another codec is read as a peer ID by its multihash."""
    try:
        peer = PeerId.parse(text)
    except InvalidPeerId as first:
        try:
            cid = ContentId.parse(text)
        except InvalidCid:
            raise first from None
        peer = PeerId.from_bytes(cid.multihash)
    # An inlined (identity) ID is the key itself: one that holds no key names no peer.
    if peer.raw[0] == IDENTITY_CODE and peer.extract_public_key() is None:
        raise InvalidPeerId(f"{text!r} inlines no public key")
    return peer


def negotiate(accept: Sequence[str]) -> Format:
    """NDJSON only when an Accept header names it; anything else, even what we do not offer
    or cannot parse, gets JSON (the spec: never stream to a client that did not ask)."""
    for header in accept:
        for item in header.split(","):
            media = item.split(";", 1)[0].strip().lower()
            if media == NDJSON_TYPE:
                return Format.NDJSON
    return Format.JSON


def _parse_filters(query: str) -> Filters:
    addrs: tuple[str, ...] = ()
    protocols: tuple[str, ...] = ()
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name not in ("filter-addrs", "filter-protocols"):
            continue
        items = tuple(v.strip().lower() for v in value.split(",") if v.strip())
        if len(items) > MAX_FILTER_NAMES or any(len(i) > MAX_FILTER_NAME_LEN + 1 for i in items):
            raise ValueError(
                f"{name}: at most {MAX_FILTER_NAMES} names of {MAX_FILTER_NAME_LEN} characters"
            )
        if name == "filter-addrs":
            addrs = items
        else:
            protocols = items
    return Filters(addrs=addrs, protocols=protocols)


# -- answers -------------------------------------------------------------------------------


def http_date(wall: float) -> str:
    """RFC 9110 IMF-fixdate, e.g. `Sun, 06 Nov 1994 08:49:37 GMT`."""
    return email.utils.formatdate(wall, usegmt=True)


def cors_headers() -> Headers:
    return [
        ("Access-Control-Allow-Origin", "*"),
        ("Access-Control-Allow-Methods", ALLOW_METHODS),
    ]


def preflight_headers() -> Headers:
    return [
        *cors_headers(),
        ("Access-Control-Allow-Headers", ALLOW_HEADERS),
        ("Access-Control-Max-Age", str(PREFLIGHT_MAX_AGE)),
    ]


def result_headers(fmt: Format, *, found: bool, wall: float, private: bool) -> Headers:
    """Headers of a 200 answer. `private`: answers behind a token must not sit in a shared
    cache, where any caller could read them."""
    max_age = MAX_AGE_FOUND if found else MAX_AGE_EMPTY
    visibility = "private" if private else "public"
    return [
        ("Content-Type", fmt.value),
        ("Vary", "Accept"),
        (
            "Cache-Control",
            f"{visibility}, max-age={max_age}, stale-while-revalidate={MAX_STALE},"
            f" stale-if-error={MAX_STALE}",
        ),
        ("Last-Modified", http_date(wall)),
        *cors_headers(),
    ]


def error_headers(status: int) -> Headers:
    headers = [("Content-Type", TEXT_TYPE), *cors_headers()]
    if status == 401:
        headers.append(("WWW-Authenticate", 'Bearer realm="routing"'))
    return headers


def error_body(message: str) -> bytes:
    # boxo caps an error text at 1024 bytes.
    return message.encode()[:1024] + b"\n"


def authorized(token: str | None, authorization: Sequence[str]) -> bool:
    """Whether one `Authorization` header carries `Bearer <token>` (always, without a token)."""
    if token is None:
        return True
    if len(authorization) != 1:
        return False
    scheme, _, given = authorization[0].strip().partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode(), token.encode()
    )
