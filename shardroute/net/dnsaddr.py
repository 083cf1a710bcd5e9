"""`/dnsaddr/` resolution for bootstrap seeds (the libp2p dnsaddr spec).

`/dnsaddr/example.org` names the TXT records of `_dnsaddr.example.org`; each record
`dnsaddr=<multiaddr>` is an address, possibly another `/dnsaddr/` to follow. With a `/p2p/<id>`
suffix only the addresses of that peer are kept. Recursion and fan-out are bounded so a hostile
or broken zone cannot make us resolve forever.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from multiaddr import Multiaddr

from shardroute.addrs import parse_multiaddr, split_p2p

if TYPE_CHECKING:
    import dns.asyncresolver

log = logging.getLogger(__name__)

# Nested /dnsaddr/ levels followed (go-multiaddr-dns allows a few; 4 covers real seed zones).
MAX_DEPTH = 4
# Addresses taken from one resolution in all.
MAX_ADDRS = 64
TXT_PREFIX = "dnsaddr="


class DnsaddrError(Exception):
    """A /dnsaddr/ name could not be resolved (the message says which and why)."""


def is_dnsaddr(addr: Multiaddr) -> bool:
    return any(proto.name == "dnsaddr" for proto, _ in addr.items())


async def resolve_dnsaddr(
    addr: Multiaddr, resolver: dns.asyncresolver.Resolver | None = None
) -> list[Multiaddr]:
    """The addresses `addr` stands for (itself if it is not a /dnsaddr/ address)."""
    if not is_dnsaddr(addr):
        return [addr]
    if resolver is None:
        # Imported here: dnspython costs a node about 4 MiB, and most never resolve a seed name.
        import dns.asyncresolver

        resolver = dns.asyncresolver.Resolver()
    out: list[Multiaddr] = []
    await _resolve(addr, resolver, 0, out)
    return out


async def resolve_all(
    addrs: Sequence[Multiaddr], resolver: dns.asyncresolver.Resolver | None = None
) -> list[Multiaddr]:
    """Every address expanded; a name that fails is logged and skipped, not fatal."""
    out: list[Multiaddr] = []
    for addr in addrs:
        try:
            out.extend(await resolve_dnsaddr(addr, resolver))
        except DnsaddrError as exc:
            log.warning("%s", exc)
    return list(dict.fromkeys(out))


async def _resolve(
    addr: Multiaddr, resolver: dns.asyncresolver.Resolver, depth: int, out: list[Multiaddr]
) -> None:
    parts = list(addr.items())
    if not parts or parts[0][0].name != "dnsaddr":
        out.append(addr)
        return
    import dns.exception

    if depth >= MAX_DEPTH:
        raise DnsaddrError(f"{addr}: more than {MAX_DEPTH} nested /dnsaddr/ levels")
    domain = str(parts[0][1])
    _, want_peer = split_p2p(addr)
    try:
        answer = await resolver.resolve(f"_dnsaddr.{domain}", "TXT")
    except (dns.exception.DNSException, OSError) as exc:
        raise DnsaddrError(f"cannot resolve /dnsaddr/{domain}: {exc}") from exc
    for record in answer:
        text = b"".join(record.strings).decode("utf-8", "replace")
        if not text.startswith(TXT_PREFIX):
            continue
        try:
            found = parse_multiaddr(text[len(TXT_PREFIX) :])
            _, peer = split_p2p(found)
        except ValueError as exc:
            log.info("/dnsaddr/%s: skipping %r: %s", domain, text, exc)
            continue
        if want_peer is not None and peer != want_peer:
            continue
        if len(out) >= MAX_ADDRS:
            return
        await _resolve(found, resolver, depth + 1, out)
