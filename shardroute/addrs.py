"""Multiaddr helpers over the `multiaddr` package: parsing, /p2p handling, TCP endpoints.

`multiaddr` validates binary input lazily, so every conversion from bytes is checked by a
round trip here and fails with ValueError alone.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable

from multiaddr import Multiaddr

from shardroute.errors import InvalidPeerId
from shardroute.identity.peer_id import PeerId

_TCP_HOSTS = ("ip4", "ip6", "dns", "dns4", "dns6")
MAX_ADDR_BYTES = 1024


def parse_multiaddr(text: str) -> Multiaddr:
    try:
        addr = Multiaddr(text)
        addr.to_bytes()
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


def is_loopback(addr: Multiaddr) -> bool:
    ip = ip_of(addr)
    return ip is not None and ip.is_loopback


def is_private(addr: Multiaddr) -> bool:
    ip = ip_of(addr)
    return ip is not None and (ip.is_private or ip.is_loopback or ip.is_link_local)


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
