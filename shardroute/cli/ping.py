"""`shardroute ping`: dial any libp2p node from a throwaway identity, ping it, show identify."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import anyio

from shardroute.errors import ShardrouteError


async def ping(args: argparse.Namespace) -> int:
    from shardroute.addrs import parse_multiaddr, split_p2p
    from shardroute.identity.keys import Ed25519PrivateKey
    from shardroute.net.host import Host, HostLimits

    try:
        target = parse_multiaddr(args.multiaddr)
    except ValueError as exc:
        print(f"shardroute ping: bad multiaddr: {exc}", file=sys.stderr)
        return 2
    if args.count < 1:
        print("shardroute ping: --count must be at least 1", file=sys.stderr)
        return 2
    host_limits = HostLimits(dial_timeout=args.timeout, upgrade_timeout=args.timeout)
    async with Host(Ed25519PrivateKey.generate(), host_limits=host_limits) as host:
        try:
            conn = await host.dial(target)
            with anyio.fail_after(args.timeout):
                await host.wait_identified(conn.remote_peer)
            peer = conn.remote_peer
            rtts = await host.ping(peer, args.count)
        except (ShardrouteError, TimeoutError) as exc:
            print(f"shardroute ping: {exc or 'timed out'}", file=sys.stderr)
            return 1
        data = host.peerstore.get(peer)
        info: dict[str, Any] = {
            "peer_id": str(peer),
            "agent": data.agent_version if data else None,
            "protocol_version": data.protocol_version if data else None,
            "protocols": sorted(data.protocols) if data else [],
            "listen_addrs": [str(a) for a in host.peerstore.addrs(peer, host.clock.monotonic())],
            "rtt_ms": [round(r * 1000, 3) for r in rtts],
        }
        _, expected = split_p2p(target)
        if args.json:
            print(json.dumps(info))
        else:
            for i, rtt in enumerate(info["rtt_ms"], 1):
                print(f"ping {i}: {rtt} ms")
            print(
                f"peer id:    {info['peer_id']}"
                + ("" if expected else "  (not pinned by the address)")
            )
            print(f"agent:      {info['agent']}")
            print("protocols:  " + ", ".join(info["protocols"]))
            print("listen:     " + ", ".join(info["listen_addrs"]))
    return 0
