"""The resource manager: named budgets for what a peer can make this node hold, in the manner
of go-libp2p's resource manager. Work over budget is refused (the newest loses, nothing already
running is disturbed) and counted by scope and resource.

Scopes: `system` (the whole host), `transient` (connections still upgrading, not yet owned by a
peer), `ip` (one remote address), `ip_group` (one network, `addrs.ip_group`: the pending upgrades
of many addresses of one network), `peer`, `protocol` (one protocol of one peer). A reservation
is taken before the work starts and released when it ends (`Reservation.release`, idempotent).

Connections to protected peers (the routing table's) and dials we started may use the
`reserved_connections` that inbound strangers cannot, so a flood of inbound connections never
cuts the node off from its own table.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from shardroute import limits
from shardroute.addrs import ip_group
from shardroute.errors import ResourceLimitExceeded
from shardroute.identity.peer_id import PeerId


class RefusalMetrics(Protocol):
    def resource_refused(self, scope: str, resource: str) -> None: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class ResourceLimits:
    connections: int = limits.MAX_CONNECTIONS
    inbound_connections: int = limits.MAX_INBOUND_CONNECTIONS
    outbound_connections: int = limits.MAX_OUTBOUND_CONNECTIONS
    reserved_connections: int = limits.RESERVED_CONNECTIONS
    connections_per_ip: int = limits.MAX_CONNECTIONS_PER_IP
    pending_upgrades: int = limits.MAX_INBOUND_PENDING
    pending_upgrades_per_ip: int = limits.MAX_INBOUND_PENDING_PER_IP
    pending_upgrades_per_group: int = limits.MAX_INBOUND_PENDING_PER_IP_GROUP
    inbound_streams_per_peer: int = limits.MAX_INBOUND_STREAMS_PER_PEER
    outbound_streams_per_peer: int = limits.MAX_OUTBOUND_STREAMS_PER_PEER
    inbound_streams_per_protocol: int = limits.MAX_INBOUND_STREAMS_PER_PROTOCOL
    memory: int = limits.MAX_BUFFER_MEMORY
    memory_per_peer: int = limits.MAX_BUFFER_MEMORY_PER_PEER
    # Loopback peers are this host's own processes: the per-IP and per-group caps do not apply
    # to them.
    exempt_loopback: bool = True

    def __post_init__(self) -> None:
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if not isinstance(value, bool) and value < (0 if name == "reserved_connections" else 1):
                raise ValueError(f"resource limit {name} must be at least 1, got {value}")
        if self.reserved_connections >= self.connections:
            raise ValueError("reserved_connections must be below connections")


@dataclass(slots=True)
class Reservation:
    """What one piece of work holds; `release` gives it back (once)."""

    _release: Callable[[], None] | None

    def release(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            release()


@dataclass(slots=True)
class _PeerUse:
    connections: int = 0
    inbound_streams: int = 0
    outbound_streams: int = 0
    protocols: Counter[str] = field(default_factory=Counter)
    memory: int = 0


IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def address_key(ip: IpAddress | str | None) -> str | None:
    """What per-address limits count by: the IPv4 address, or the IPv6 /64 (one host's
    share of a subnet); None for what is not an IP address."""
    if ip is None:
        return None
    try:
        parsed = ipaddress.ip_address(ip)
    except ValueError:
        return None
    if parsed.version == 6:
        if parsed.ipv4_mapped is not None:
            return str(parsed.ipv4_mapped)
        return str(ipaddress.ip_network(f"{parsed}/64", strict=False))
    return str(parsed)


def group_key(ip: IpAddress | str | None) -> str | None:
    """What per-group limits count by: the address's IP group (`addrs.ip_group`, private
    addresses included: a LAN is one network too); None for what is not an IP address."""
    if ip is None:
        return None
    try:
        return ip_group(str(ip), exempt_private=False)
    except ValueError:
        return None


class ResourceManager:
    def __init__(
        self,
        resource_limits: ResourceLimits | None = None,
        *,
        metrics: RefusalMetrics | None = None,
        protected: Callable[[PeerId], bool] | None = None,
    ) -> None:
        self.limits = resource_limits or ResourceLimits()
        self.metrics = metrics
        # Whether a peer is one we keep a reserve for (set by whoever owns the routing table).
        self.protected: Callable[[PeerId], bool] = protected or (lambda _peer: False)
        self.pending = 0
        self.inbound = 0
        self.outbound = 0
        self.memory = 0
        self._pending_by_ip: Counter[str] = Counter()
        self._pending_by_group: Counter[str] = Counter()
        self._connections_by_ip: Counter[str] = Counter()
        self._peers: dict[PeerId, _PeerUse] = {}

    # -- counting --------------------------------------------------------------------------

    def _refuse(self, scope: str, resource: str, detail: str) -> ResourceLimitExceeded:
        if self.metrics is not None:
            self.metrics.resource_refused(scope, resource)
        return ResourceLimitExceeded(f"{scope} {resource} limit reached: {detail}")

    def _ip_limited(self, ip: IpAddress | None) -> str | None:
        key = address_key(ip)
        if key is None:
            return None
        if self.limits.exempt_loopback and ipaddress.ip_network(key, strict=False).is_loopback:
            return None
        return key

    def _use(self, peer: PeerId) -> _PeerUse:
        use = self._peers.get(peer)
        if use is None:
            use = self._peers[peer] = _PeerUse()
        return use

    def _maybe_forget(self, peer: PeerId) -> None:
        use = self._peers.get(peer)
        if use is not None and not (
            use.connections or use.inbound_streams or use.outbound_streams or use.memory
        ):
            del self._peers[peer]

    # -- connections -----------------------------------------------------------------------

    def begin_upgrade(self, ip: IpAddress | None) -> Reservation:
        """An accepted socket that has not yet said who it is (Noise, multistream)."""
        key = self._ip_limited(ip)
        group = group_key(ip) if key is not None else None
        if self.inbound + self.outbound >= self.limits.connections:
            raise self._refuse("system", "connections", "every connection slot is taken")
        if self.pending >= self.limits.pending_upgrades:
            raise self._refuse("transient", "pending_upgrades", f"{self.pending} upgrading")
        if key is not None and self._pending_by_ip[key] >= self.limits.pending_upgrades_per_ip:
            raise self._refuse("ip", "pending_upgrades", f"{key} has {self._pending_by_ip[key]}")
        if (
            group is not None
            and self._pending_by_group[group] >= self.limits.pending_upgrades_per_group
        ):
            held = self._pending_by_group[group]
            raise self._refuse("ip_group", "pending_upgrades", f"{group} has {held}")
        # An address with this many connections already gets no more sockets upgraded.
        if key is not None and self._connections_by_ip[key] >= self.limits.connections_per_ip:
            raise self._refuse("ip", "connections", f"{key} holds {self._connections_by_ip[key]}")
        self.pending += 1
        if key is not None:
            self._pending_by_ip[key] += 1
        if group is not None:
            self._pending_by_group[group] += 1

        def release() -> None:
            self.pending -= 1
            if key is not None:
                self._pending_by_ip[key] -= 1
                if not self._pending_by_ip[key]:
                    del self._pending_by_ip[key]
            if group is not None:
                self._pending_by_group[group] -= 1
                if not self._pending_by_group[group]:
                    del self._pending_by_group[group]

        return Reservation(release)

    def open_connection(self, peer: PeerId, *, inbound: bool, ip: IpAddress | None) -> Reservation:
        """An upgraded connection to `peer`. Inbound strangers stop short of the reserve."""
        key = self._ip_limited(ip)
        total = self.inbound + self.outbound
        privileged = not inbound or self.protected(peer)
        ceiling = self.limits.connections - (0 if privileged else self.limits.reserved_connections)
        if total >= ceiling:
            raise self._refuse("system", "connections", f"{total} open")
        if inbound and self.inbound >= self.limits.inbound_connections and not privileged:
            raise self._refuse("system", "inbound_connections", f"{self.inbound} inbound")
        if not inbound and self.outbound >= self.limits.outbound_connections:
            raise self._refuse("system", "outbound_connections", f"{self.outbound} outbound")
        if (
            key is not None
            and inbound
            and self._connections_by_ip[key] >= self.limits.connections_per_ip
        ):
            raise self._refuse("ip", "connections", f"{key} holds {self._connections_by_ip[key]}")
        if inbound:
            self.inbound += 1
        else:
            self.outbound += 1
        if key is not None:
            self._connections_by_ip[key] += 1
        self._use(peer).connections += 1

        def release() -> None:
            if inbound:
                self.inbound -= 1
            else:
                self.outbound -= 1
            if key is not None:
                self._connections_by_ip[key] -= 1
                if not self._connections_by_ip[key]:
                    del self._connections_by_ip[key]
            self._use(peer).connections -= 1
            self._maybe_forget(peer)

        return Reservation(release)

    def can_dial(self) -> None:
        """Raise if an outbound connection could not be kept once made."""
        if self.inbound + self.outbound >= self.limits.connections:
            raise self._refuse("system", "connections", "every connection slot is taken")
        if self.outbound >= self.limits.outbound_connections:
            raise self._refuse("system", "outbound_connections", f"{self.outbound} outbound")

    # -- streams ---------------------------------------------------------------------------

    def open_stream(self, peer: PeerId, *, inbound: bool) -> Reservation:
        use = self._use(peer)
        if inbound and use.inbound_streams >= self.limits.inbound_streams_per_peer:
            raise self._refuse("peer", "inbound_streams", f"{peer} has {use.inbound_streams}")
        if not inbound and use.outbound_streams >= self.limits.outbound_streams_per_peer:
            raise self._refuse("peer", "outbound_streams", f"{peer} has {use.outbound_streams}")
        if inbound:
            use.inbound_streams += 1
        else:
            use.outbound_streams += 1

        def release() -> None:
            if inbound:
                use.inbound_streams -= 1
            else:
                use.outbound_streams -= 1
            self._maybe_forget(peer)

        return Reservation(release)

    def serve_protocol(self, peer: PeerId, protocol: str) -> Reservation:
        """An inbound stream of `peer`'s, once it has said which protocol it speaks."""
        use = self._use(peer)
        held = use.protocols[protocol]
        if held >= self.limits.inbound_streams_per_protocol:
            raise self._refuse("protocol", "inbound_streams", f"{peer} has {held} on {protocol}")
        use.protocols[protocol] += 1

        def release() -> None:
            use.protocols[protocol] -= 1
            if not use.protocols[protocol]:
                del use.protocols[protocol]

        return Reservation(release)

    # -- memory ----------------------------------------------------------------------------

    def grow_memory(self, peer: PeerId, n: int) -> bool:
        """Account `n` more buffered bytes for `peer`; False (counted) when over budget."""
        use = self._use(peer)
        if self.memory + n > self.limits.memory:
            self._refuse("system", "memory", f"{self.memory} bytes buffered")
            return False
        if use.memory + n > self.limits.memory_per_peer:
            self._refuse("peer", "memory", f"{peer} has {use.memory} bytes buffered")
            return False
        use.memory += n
        self.memory += n
        return True

    def shrink_memory(self, peer: PeerId, n: int) -> None:
        use = self._peers.get(peer)
        if use is None:
            return
        n = min(n, use.memory)
        use.memory -= n
        self.memory -= n
        self._maybe_forget(peer)
