"""The `shardroute` command line."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio

from shardroute import __version__
from shardroute.cli_client import add_client_commands, run_client_command
from shardroute.errors import ShardrouteError

log = logging.getLogger("shardroute")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shardroute", description=__doc__)
    parser.add_argument("--version", action="version", version=f"shardroute {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run a node", description="Run a shardroute node.")
    serve.add_argument(
        "--listen",
        action="append",
        metavar="MULTIADDR",
        help="address to listen on (repeatable; default /ip4/0.0.0.0/tcp/4001)",
    )
    serve.add_argument(
        "--bootstrap",
        action="append",
        metavar="MULTIADDR",
        help="peer to join through (repeatable)",
    )
    serve.add_argument(
        "--protocol", metavar="ID", help="Kademlia protocol ID (default /icn/kad/1.0.0)"
    )
    serve.add_argument("--mode", choices=["server", "client"], help="DHT mode (default server)")
    serve.add_argument(
        "--grpc", metavar="HOST:PORT", help="gRPC API address (default 127.0.0.1:7070)"
    )
    serve.add_argument(
        "--metrics", metavar="HOST:PORT", help="Prometheus endpoint (default 127.0.0.1:9464)"
    )
    serve.add_argument("--data-dir", metavar="DIR", help="where the node keeps its key and state")
    serve.add_argument("--config", metavar="FILE", type=Path, help="TOML configuration file")
    serve.add_argument("--log-level", metavar="LEVEL", help="debug, info, warning or error")
    serve.add_argument("--log-format", choices=["text", "json"], help="log line format")

    ping = sub.add_parser(
        "ping",
        help="ping any libp2p node",
        description="Ping any libp2p node from a throwaway identity; show what identify says.",
    )
    ping.add_argument(
        "multiaddr", metavar="MULTIADDR", help="the node's address, ideally with /p2p/<id>"
    )
    ping.add_argument("--count", type=int, default=3, metavar="N", help="pings to send (default 3)")
    ping.add_argument(
        "--timeout", type=float, default=15.0, metavar="S", help="dial timeout in seconds"
    )
    ping.add_argument("--json", action="store_true", help="print one JSON object")

    db = sub.add_parser("db", help="database maintenance", description="Database maintenance.")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    upgrade = db_sub.add_parser("upgrade", help="apply schema migrations to the node's database")
    upgrade.add_argument("--data-dir", metavar="DIR", help="the node's data folder")
    upgrade.add_argument("--config", metavar="FILE", type=Path, help="TOML configuration file")

    add_client_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "ping":
            return anyio.run(_ping, args, backend="asyncio")
        if args.command == "db":
            return _db_upgrade(args)
        return run_client_command(args)
    except ShardrouteError as exc:
        print(f"shardroute: {exc}", file=sys.stderr)
        return 1


def _db_upgrade(args: argparse.Namespace) -> int:
    from shardroute.config import load_settings
    from shardroute.store.sqlite import DATABASE_FILE, upgrade_database

    overrides = {"data_dir": args.data_dir} if args.data_dir else {}
    settings = load_settings(config_file=args.config, env=os.environ, overrides=overrides)
    path = Path(settings.data_dir) / DATABASE_FILE
    upgrade_database(path)
    print(f"{path}: schema up to date")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from shardroute.app import run_node
    from shardroute.config import load_settings
    from shardroute.obs.logging import configure_logging

    overrides: dict[str, Any] = {}
    if args.listen:
        overrides["listen"] = args.listen
    if args.bootstrap:
        overrides["bootstrap"] = args.bootstrap
    if args.protocol:
        overrides["protocol"] = args.protocol
    if args.mode:
        overrides["mode"] = args.mode
    if args.grpc:
        overrides["grpc"] = args.grpc
    if args.metrics:
        overrides["metrics"] = args.metrics
    if args.data_dir:
        overrides["data_dir"] = args.data_dir
    if args.log_level:
        overrides["log_level"] = args.log_level
    if args.log_format:
        overrides["log_format"] = args.log_format
    settings = load_settings(config_file=args.config, env=os.environ, overrides=overrides)
    configure_logging(settings.log_level, settings.log_format)

    def announce(lines: Sequence[str]) -> None:
        for line in lines:
            print(line, flush=True)

    anyio.run(run_node, settings, announce, backend="asyncio")
    return 0


async def _ping(args: argparse.Namespace) -> int:
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
