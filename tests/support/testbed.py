"""A network of hosts on this machine, made of Linux network namespaces (../shared/testbed.md).

Each host is a namespace with its own loopback and one `eth0`, the end of a veth pair whose other
end sits in a switch namespace on a bridge. Nothing is put in the root namespace and no route
leads out of the test network, so no packet leaves the machine. Every name carries a per-run
prefix; a testbed deletes what an earlier run with its prefix left behind before it builds, and
everything it made when it closes. Building needs root (CI and the development machines run
as root) and `ip` from iproute2; NAT needs `nft` (the test set-up installs nftables).
"""

from __future__ import annotations

import ipaddress
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

# On one bridge every host gets an address in a /16 of its own (distinct IP groups for the
# diversity filter), all inside one /8 so they reach each other directly.
LAN = ipaddress.ip_network("10.0.0.0/8")
PRIVATE_LAN = ipaddress.ip_network("192.168.77.0/24")  # behind the NAT router


def available() -> str | None:
    """Why a testbed cannot be built here, or None."""
    if os.geteuid() != 0:
        return "building network namespaces needs root"
    try:
        subprocess.run(["ip", "netns", "list"], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        return f"`ip netns` does not work here: {exc}"
    return None


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")


@dataclass
class NetHost:
    """One host: a namespace, its address on the test network, and what runs in it."""

    testbed: Testbed
    name: str
    ns: str
    ip: str
    processes: list[subprocess.Popen[str]] = field(default_factory=list)

    def command(self, args: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.ns, *args]

    def run(
        self, *args: str, timeout: float = 60, check: bool = False
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.command(args), capture_output=True, text=True, timeout=timeout, check=check
        )

    def start(self, args: Sequence[str], *, log: Path, **kwargs: object) -> subprocess.Popen[str]:
        """A process on this host, in its own process group (stopped by signalling the group)."""
        with log.open("a") as out:
            proc = subprocess.Popen(  # type: ignore[call-overload]
                self.command(args),
                stderr=out,
                text=True,
                start_new_session=True,
                **{"stdout": subprocess.PIPE, "stdin": subprocess.DEVNULL, **kwargs},
            )
        self.processes.append(proc)
        return proc

    def shardroute(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """A shardroute client command on this host (its gRPC API is on this host's 127.0.0.1)."""
        return self.run(sys.executable, "-m", "shardroute", *args, timeout=timeout)


def stop(proc: subprocess.Popen[str], sig: int = signal.SIGTERM, timeout: float = 10) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


class Testbed:
    __test__ = False  # a helper, not a test class

    def __init__(self, prefix: str | None = None) -> None:
        self.prefix = prefix or f"sr{os.getpid() % 100000}"
        self.hosts: list[NetHost] = []
        self._namespaces: list[str] = []
        self._next_group = 71
        self._links = 0
        self.remove_stale()

    # -- building ----------------------------------------------------------------------------

    def remove_stale(self) -> None:
        listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        for line in listing.splitlines():
            name = line.split()[0] if line.strip() else ""
            if name.startswith(self.prefix + "-"):
                subprocess.run(["ip", "netns", "del", name], capture_output=True)

    def _namespace(self, name: str) -> str:
        ns = f"{self.prefix}-{name}"
        _ip("netns", "add", ns)
        self._namespaces.append(ns)
        _ip("-n", ns, "link", "set", "lo", "up")
        return ns

    def switch(self, name: str) -> str:
        """A namespace holding a bridge `br0`; returns the namespace."""
        ns = self._namespace(name)
        _ip("-n", ns, "link", "add", "br0", "type", "bridge")
        _ip("-n", ns, "link", "set", "br0", "up")
        return ns

    def _plug(self, host_ns: str, switch_ns: str, ifname: str) -> None:
        """A veth from `ifname` in the host to the switch's bridge, made inside the namespaces."""
        self._links += 1
        port = f"p{self._links}"
        _ip("link", "add", "name", ifname, "netns", host_ns, "type", "veth",
            "peer", "name", port, "netns", switch_ns)  # fmt: skip
        _ip("-n", switch_ns, "link", "set", port, "master", "br0")
        _ip("-n", switch_ns, "link", "set", port, "up")
        _ip("-n", host_ns, "link", "set", ifname, "up")

    def host(self, name: str, switch_ns: str, *, ip: str | None = None) -> NetHost:
        """A host on the switch's LAN: by default the first address of a /16 of its own."""
        ns = self._namespace(name)
        self._plug(ns, switch_ns, "eth0")
        if ip is None:
            ip = f"10.{self._next_group}.0.1"
            self._next_group += 1
        _ip("-n", ns, "addr", "add", f"{ip}/{LAN.prefixlen}", "dev", "eth0")
        host = NetHost(self, name, ns, ip)
        self.hosts.append(host)
        return host

    def nat(self, name: str, public_switch: str, *, forward_port: int = 4001) -> NetHost:
        """A host behind a NAT router: the router has a leg on the public switch and one on a
        private switch of its own; it masquerades the private /24 and forwards
        `forward_port` of its public address to the host's. Returns the private host; its
        `public_ip` attribute is the router's public address."""
        private_switch = self.switch(f"{name}sw")
        router_ns = self._namespace(f"{name}gw")
        public_ip = f"10.{self._next_group}.0.1"
        self._next_group += 1
        gateway = str(PRIVATE_LAN.network_address + 1)
        inside = str(PRIVATE_LAN.network_address + 2)
        self._plug(router_ns, public_switch, "wan")
        self._plug(router_ns, private_switch, "lan")
        _ip("-n", router_ns, "addr", "add", f"{public_ip}/{LAN.prefixlen}", "dev", "wan")
        _ip("-n", router_ns, "addr", "add", f"{gateway}/{PRIVATE_LAN.prefixlen}", "dev", "lan")
        subprocess.run(
            ["ip", "netns", "exec", router_ns, "sysctl", "-qw", "net.ipv4.ip_forward=1"],
            check=True,
        )
        rules = f"""
table ip nat {{
  chain prerouting {{
    type nat hook prerouting priority -100;
    iifname "wan" tcp dport {forward_port} dnat to {inside}:{forward_port}
  }}
  chain postrouting {{
    type nat hook postrouting priority 100;
    oifname "wan" ip saddr {PRIVATE_LAN} masquerade
  }}
}}
"""
        subprocess.run(
            ["ip", "netns", "exec", router_ns, "nft", "-f", "-"],
            input=rules,
            text=True,
            check=True,
            capture_output=True,
        )
        ns = self._namespace(name)
        self._plug(ns, private_switch, "eth0")
        _ip("-n", ns, "addr", "add", f"{inside}/{PRIVATE_LAN.prefixlen}", "dev", "eth0")
        _ip("-n", ns, "route", "add", "default", "via", gateway)
        host = NetHost(self, name, ns, inside)
        host.public_ip = public_ip  # type: ignore[attr-defined]
        self.hosts.append(host)
        return host

    # -- tearing down --------------------------------------------------------------------------

    def close(self) -> None:
        for host in self.hosts:
            for proc in host.processes:
                stop(proc)
        for ns in reversed(self._namespaces):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self._namespaces.clear()

    def __enter__(self) -> Testbed:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
