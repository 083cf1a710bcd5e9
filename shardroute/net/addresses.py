"""Our own addresses and who may use which: interface expansion of wildcard listeners, the
operator's `announce` / `append_announce` / `no_announce`, addresses others observe us at, and
the scope filter every address passes before it is handed to a peer.

Scopes. Every IP address is loopback, link-local, private (RFC 1918, CGNAT, IPv6 ULA) or public
(everything else: the documentation ranges count as public, so test networks can use them as
such). An address is handed to a peer only if that peer can use it: loopback ones only to peers
on this host, private ones only to peers whose connection is itself private (unless the
operator shares them), link-local ones to nobody. A DNS name is public.

Observed addresses (the idea of go-libp2p's observed-address manager). Identify tells us the
address a peer sees our connection come from. On a connection the peer dialed, that is an
address that reached us; on one we dialed, its IP with our listen port is what a port-forwarding
NAT would make of it. Such a candidate is advertised once peers in at least
`OBSERVED_CONFIRMATIONS` distinct IP groups report it, and dropped when they stop.
"""

from __future__ import annotations

import enum
import functools
import ipaddress
import socket
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import psutil
from multiaddr import Multiaddr

from shardroute.addrs import addr_text, ip_group, ip_of, tcp_endpoint, tcp_multiaddr

# Distinct IP groups that must report an observed address before we advertise it (go: 4).
OBSERVED_CONFIRMATIONS = 4
# An observation counts this long after it was made (go forgets them after about 30 min).
OBSERVATION_TTL = 30 * 60.0
# Candidates tracked at once; the least recently observed go first.
MAX_OBSERVED_CANDIDATES = 64

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_PRIVATE = tuple(
    ipaddress.ip_network(n)
    for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7")
)


class Scope(enum.IntEnum):
    LOOPBACK = 0
    LINK_LOCAL = 1
    PRIVATE = 2
    PUBLIC = 3


# The same few addresses pass through every answer; parsing them again was a tenth of a
# lookup's CPU in the loopback network test.
@functools.lru_cache(maxsize=16384)
def scope_of(addr: Multiaddr) -> Scope:
    ip = ip_of(addr)
    if ip is None:
        return Scope.PUBLIC  # a DNS name
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback or ip.is_unspecified:
        return Scope.LOOPBACK
    if ip.is_link_local:
        return Scope.LINK_LOCAL
    if any(ip in net for net in _PRIVATE):
        return Scope.PRIVATE
    return Scope.PUBLIC


def usable_by(addr: Multiaddr, peer_scope: Scope, *, share_private: bool = False) -> bool:
    """Whether a peer whose connection comes from `peer_scope` can use `addr`."""
    scope = scope_of(addr)
    if scope is Scope.PUBLIC:
        return True
    if scope is Scope.PRIVATE:
        return share_private or peer_scope <= Scope.PRIVATE
    if scope is Scope.LOOPBACK:
        return peer_scope is Scope.LOOPBACK
    return False


def shareable(
    addrs: Iterable[Multiaddr], peer_scope: Scope, *, share_private: bool = False
) -> tuple[Multiaddr, ...]:
    return _shareable(tuple(addrs), peer_scope, share_private)


# Every answer filters the same table peers' addresses for the same few scopes.
@functools.lru_cache(maxsize=16384)
def _shareable(
    addrs: tuple[Multiaddr, ...], peer_scope: Scope, share_private: bool
) -> tuple[Multiaddr, ...]:
    kept = tuple(a for a in addrs if usable_by(a, peer_scope, share_private=share_private))
    return addrs if len(kept) == len(addrs) else kept


def interface_addresses(*, ipv6: bool) -> list[str]:
    """This host's addresses of one family, from its interfaces (never via the hostname,
    which a stock Debian resolves to 127.0.1.1); link-local IPv6 needs a zone and is left out."""
    family = socket.AF_INET6 if ipv6 else socket.AF_INET
    found: list[str] = []
    for entries in psutil.net_if_addrs().values():
        for entry in entries:
            if entry.family != family:
                continue
            text = entry.address.split("%")[0]
            try:
                ip = ipaddress.ip_address(text)
            except ValueError:
                continue
            if ip.is_unspecified or ip.is_link_local or text in found:
                continue
            found.append(text)
    return found


def expand_wildcards(listen: Sequence[Multiaddr]) -> list[Multiaddr]:
    """Bound listen addresses with 0.0.0.0 and :: replaced by every interface address."""
    out: list[Multiaddr] = []
    for addr in listen:
        endpoint = tcp_endpoint(addr)
        if endpoint is None:
            continue
        host, port = endpoint
        if host in ("0.0.0.0", "::"):
            out += [tcp_multiaddr(ip, port) for ip in interface_addresses(ipv6=host == "::")]
        else:
            out.append(addr)
    return list(dict.fromkeys(out))


def parse_cidr(text: str) -> IpNetwork:
    """A `no_announce` entry: a CIDR block (a bare address is its own /32 or /128)."""
    return ipaddress.ip_network(text.strip(), strict=False)


@dataclass(frozen=True, slots=True)
class AnnouncePolicy:
    """The operator's say over what we advertise (kubo's `Addresses.Announce` and friends):
    `announce` replaces the list, `append_announce` adds to it, `no_announce` filters it."""

    announce: tuple[Multiaddr, ...] = ()
    append_announce: tuple[Multiaddr, ...] = ()
    no_announce: tuple[IpNetwork, ...] = ()

    def apply(self, found: Sequence[Multiaddr]) -> list[Multiaddr]:
        base = list(self.announce) if self.announce else list(found)
        chosen = [*base, *self.append_announce]
        return list(dict.fromkeys(a for a in chosen if not self._filtered(a)))

    def _filtered(self, addr: Multiaddr) -> bool:
        ip = ip_of(addr)
        return ip is not None and any(ip in net for net in self.no_announce)


@dataclass(slots=True)
class _Candidate:
    # observer's IP group -> when it last reported this address (monotonic)
    reports: dict[str, float] = field(default_factory=dict)


class ObservedAddresses:
    """Addresses peers see us at, confirmed by enough distinct IP groups."""

    def __init__(self, *, confirmations: int = OBSERVED_CONFIRMATIONS) -> None:
        self.confirmations = confirmations
        self._candidates: OrderedDict[Multiaddr, _Candidate] = OrderedDict()

    def record(
        self,
        observed: Multiaddr,
        observer: Multiaddr,
        *,
        inbound: bool,
        listen_ports: Sequence[int],
        now: float,
    ) -> None:
        """`observer` (its connection's remote address) says it sees us at `observed`."""
        endpoint = tcp_endpoint(observed)
        observer_ip = ip_of(observer)
        if endpoint is None or observer_ip is None:
            return
        if scope_of(observed) <= Scope.LINK_LOCAL:
            return  # loopback and link-local say nothing about how others reach us
        group = ip_group(str(observer_ip), exempt_private=False)
        if group is None:
            return
        host, port = endpoint
        # A peer we dialed saw our ephemeral port; a forwarded listen port is what may work.
        ports = [port] if inbound else list(dict.fromkeys(listen_ports))
        for candidate in (tcp_multiaddr(host, p) for p in ports):
            entry = self._candidates.pop(candidate, None) or _Candidate()
            entry.reports[group] = now
            self._candidates[candidate] = entry
        while len(self._candidates) > MAX_OBSERVED_CANDIDATES:
            self._candidates.popitem(last=False)

    def confirmed(self, now: float) -> list[Multiaddr]:
        out = []
        for addr, entry in self._candidates.items():
            live = sum(1 for at in entry.reports.values() if now - at < OBSERVATION_TTL)
            if live >= self.confirmations:
                out.append(addr)
        return out


class LocalAddresses:
    """What this node advertises, and to whom."""

    def __init__(self, policy: AnnouncePolicy | None = None, *, share_private: bool = False):
        self.policy = policy or AnnouncePolicy()
        self.share_private = share_private
        self.observed = ObservedAddresses()
        self.listen: list[Multiaddr] = []  # bound listen addresses (wildcards as bound)

    def listen_ports(self) -> list[int]:
        return [e[1] for a in self.listen if (e := tcp_endpoint(a)) is not None]

    def interface_listen_addrs(self) -> list[Multiaddr]:
        """The listen addresses, wildcards expanded (what `serve` prints)."""
        return expand_wildcards(self.listen)

    def advertised(self, now: float, peer_scope: Scope | None = None) -> list[Multiaddr]:
        """Our addresses for identify and DHT records; with `peer_scope`, only those a peer
        whose connection comes from that scope can use."""
        found = [a for a in self.interface_listen_addrs() if scope_of(a) is not Scope.LINK_LOCAL]
        found += [a for a in self.observed.confirmed(now) if a not in found]
        chosen = self.policy.apply(found)
        if peer_scope is None:
            return chosen
        return list(shareable(chosen, peer_scope, share_private=self.share_private))

    def is_own(self, addr: Multiaddr) -> bool:
        """Whether `addr` is one of our listen addresses (we never dial those)."""
        text = addr_text(addr)
        return any(addr_text(a) == text for a in self.interface_listen_addrs())
