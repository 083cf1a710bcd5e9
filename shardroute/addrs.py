"""Multiaddr helpers over the `multiaddr` package: parsing, /p2p handling, TCP endpoints.

`multiaddr` validates binary input lazily, so every conversion from bytes is checked by a
round trip here and fails with ValueError alone.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable

from multiaddr import Multiaddr

from shardroute import limits
from shardroute.errors import InvalidPeerId
from shardroute.identity.peer_id import PeerId

_TCP_HOSTS = ("ip4", "ip6", "dns", "dns4", "dns6")
MAX_ADDR_BYTES = 1024


def parse_multiaddr(text: str) -> Multiaddr:
    try:
        addr = Multiaddr(text)
        if "/p2p/" in text:
            # `multiaddr` writes a CID-form peer ID's CID bytes where the spec (and go) put
            # the multihash; the text it prints is the multihash, so reparse that.
            addr = Multiaddr(str(addr))
        # Its text form must read back as the same bytes (a /unix/ path with `//` does not),
        # or what we hand out would not parse again, here or at a peer.
        if Multiaddr(str(addr)).to_bytes() != addr.to_bytes():
            raise ValueError("does not round-trip")
        return addr
    except Exception as exc:  # the package raises several unrelated types
        raise ValueError(f"invalid multiaddr {text!r}: {exc}") from exc


def multiaddr_from_bytes(data: bytes) -> Multiaddr:
    if not data or len(data) > MAX_ADDR_BYTES:
        raise ValueError("multiaddr bytes empty or too long")
    return _parse_binary(bytes(data))


# The same few addresses arrive in every DHT answer, and the multiaddr package parses slowly
# (it was the top of the DHT benchmark's profile), so parsed addresses are kept.
@functools.lru_cache(maxsize=16384)
def _parse_binary(data: bytes) -> Multiaddr:
    try:
        addr = Multiaddr(bytes(data))
        text = str(addr)
        if Multiaddr(text).to_bytes() != bytes(data):
            raise ValueError("does not round-trip")
        return addr
    except Exception as exc:
        raise ValueError(f"invalid binary multiaddr {bytes(data)[:32].hex()}: {exc}") from exc


@functools.lru_cache(maxsize=16384)
def multiaddr_to_bytes(addr: Multiaddr) -> bytes:
    return bytes(addr.to_bytes())


@functools.lru_cache(maxsize=16384)
def addr_text(addr: Multiaddr) -> str:
    """The text form, kept: `multiaddr` re-renders it from bytes on every str()."""
    return str(addr)


def split_p2p(addr: Multiaddr) -> tuple[Multiaddr, PeerId | None]:
    """Strip a trailing /p2p/<id> (or /ipfs/<id>); returns the transport part and the ID."""
    parts = addr_text(addr).split("/")
    if len(parts) >= 3 and parts[-2] in ("p2p", "ipfs"):
        try:
            peer = PeerId.parse(parts[-1])
        except InvalidPeerId as exc:
            raise ValueError(f"{addr}: {exc}") from exc
        rest = "/".join(parts[:-2])
        return (parse_multiaddr(rest) if rest else Multiaddr("/")), peer
    return addr, None


def with_p2p(addr: Multiaddr, peer: PeerId) -> Multiaddr:
    return parse_multiaddr(f"{addr}/p2p/{peer}")


def tcp_endpoint(addr: Multiaddr) -> tuple[str, int] | None:
    """(host, port) for /ip4|ip6|dns|dns4|dns6/<host>/tcp/<port> (nothing after it), else None."""
    parts = addr_text(addr).strip("/").split("/")
    if len(parts) != 4 or parts[0] not in _TCP_HOSTS or parts[2] != "tcp":
        return None
    try:
        port = int(parts[3])
    except ValueError:
        return None
    return parts[1], port


def tcp_multiaddr(host: str, port: int) -> Multiaddr:
    ip = ipaddress.ip_address(host.split("%")[0])
    family = "ip6" if ip.version == 6 else "ip4"
    return Multiaddr(f"/{family}/{ip}/tcp/{port}")


def ip_of(addr: Multiaddr) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    parts = addr_text(addr).strip("/").split("/")
    if len(parts) >= 2 and parts[0] in ("ip4", "ip6"):
        try:
            return ipaddress.ip_address(parts[1])
        except ValueError:
            return None
    return None


# Legacy class A allocations that go groups by /8 rather than /16 (go-libp2p-kbucket peerdiversity).
_LEGACY_CLASS_A = tuple(
    ipaddress.IPv4Network(n)
    for n in (
        "12.0.0.0/8",
        "17.0.0.0/8",
        "19.0.0.0/8",
        "38.0.0.0/8",
        "48.0.0.0/8",
        "53.0.0.0/8",
        "56.0.0.0/8",
        "73.0.0.0/8",
    )
)


# Asked once per received record and per address of every answer; a peer's few addresses
# repeat, so a bounded cache spares the parse and the legacy-block scan.
@functools.lru_cache(maxsize=limits.IP_GROUP_CACHE_ENTRIES)
def ip_group(addr_host: str, *, exempt_private: bool = True) -> str | None:
    """The diversity group of an IP address, e.g. ``"ip4:1.2.0.0/16"``.

    IPv4: the /16, or the /8 for the legacy class A blocks go lists. IPv6: go groups by ASN, but
    there is no ASN database here, so the /32 prefix stands in for it (roughly one allocation to
    one network). IPv4-mapped IPv6 counts as IPv4. With `exempt_private`, addresses that are not
    globally routable (loopback, private, link-local, CGNAT, documentation) have no group: None.
    Raises ValueError if `addr_host` is not an IP address.
    """
    ip = ipaddress.ip_address(addr_host)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if exempt_private and not ip.is_global:
        return None
    if isinstance(ip, ipaddress.IPv4Address):
        for legacy in _LEGACY_CLASS_A:
            if ip in legacy:
                return f"ip4:{legacy}"
        return f"ip4:{ipaddress.IPv4Network((ip, 16), strict=False)}"
    return f"ip6:{ipaddress.IPv6Network((ip, 32), strict=False)}"


# Asked for every received record's source connection: the same few addresses, grouped once
# (without it, each record parsed and printed the IP again before `ip_group`'s own cache).
@functools.lru_cache(maxsize=limits.IP_GROUP_CACHE_ENTRIES)
def addr_group(addr: Multiaddr, *, exempt_private: bool = True) -> str | None:
    """`ip_group` of the address's IP; None if it has none (or, with `exempt_private`, if the
    IP is not globally routable)."""
    ip = ip_of(addr)
    return None if ip is None else ip_group(str(ip), exempt_private=exempt_private)


def sanitize_peer_addrs(peer: PeerId, raw_addrs: Iterable[bytes]) -> list[Multiaddr]:
    """Addresses a peer sent us: drop bad ones one by one, strip a /p2p naming this peer,
    drop those naming another peer. Non-TCP addresses are kept (stored and forwarded)."""
    out: list[Multiaddr] = []
    for raw in raw_addrs:
        try:
            addr = multiaddr_from_bytes(raw)
            transport, named = split_p2p(addr)
        except ValueError:
            continue
        if named is not None and named != peer:
            continue
        if addr_text(transport) in ("", "/"):
            continue
        if transport not in out:
            out.append(transport)
    return out
