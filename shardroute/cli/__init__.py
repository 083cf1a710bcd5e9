"""The `shardroute` command line."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import anyio

from shardroute import __version__
from shardroute.cli.client_commands import add_client_commands, run_client_command
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
            from shardroute.cli.serve import serve

            return serve(args)
        if args.command == "ping":
            from shardroute.cli.ping import ping

            return anyio.run(ping, args, backend="asyncio")
        if args.command == "db":
            from shardroute.cli.db import db_upgrade

            return db_upgrade(args)
        return run_client_command(args)
    except ShardrouteError as exc:
        print(f"shardroute: {exc}", file=sys.stderr)
        return 1
