"""The `shardroute` command line: `serve` runs a node, the other commands talk to one."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from shardroute import __version__
from shardroute.cli.client_commands import add_client_commands, run_client_command
from shardroute.cli.outcome import EXIT_TABLE, SERVE_EXIT_TABLE, CliError, Exit, report
from shardroute.config import Settings
from shardroute.errors import ShardrouteError

DEFAULTS = Settings()


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error under --json is a JSON object too (exit 2)."""

    def error(self, message: str) -> NoReturn:
        if "--json" in sys.argv[1:]:
            report(
                self.prog.removeprefix("shardroute "), CliError(Exit.USAGE, message), as_json=True
            )
            raise SystemExit(Exit.USAGE)
        super().error(message)


def _serve_parser(sub: argparse._SubParsersAction[Parser]) -> None:
    serve = sub.add_parser(
        "serve",
        help="run a node",
        description="Run a shardroute node until SIGINT or SIGTERM. Every option can also be "
        "set as SHARDROUTE_<NAME> in the environment or in the --config file.",
        epilog=SERVE_EXIT_TABLE,
    )
    d = DEFAULTS
    serve.add_argument(
        "--listen",
        action="append",
        metavar="MULTIADDR",
        help=f"address to listen on, repeatable (default {d.listen[0]})",
    )
    serve.add_argument(
        "--bootstrap",
        action="append",
        metavar="MULTIADDR",
        help="peer to join through, ending in /p2p/<peer ID>, or a /dnsaddr/ seed; repeatable",
    )
    serve.add_argument(
        "--protocol", metavar="ID", help=f"Kademlia protocol ID (default {d.protocol})"
    )
    serve.add_argument("--mode", choices=["server", "client"], help=f"DHT mode (default {d.mode})")
    serve.add_argument(
        "--grpc",
        dest="grpc_listen",
        metavar="HOST:PORT",
        help=f"where the gRPC API listens; empty turns it off (default {d.grpc_listen})",
    )
    serve.add_argument(
        "--api-token-file",
        metavar="FILE",
        help="callers of the API must send the token in FILE (authorization: Bearer <token>)",
    )
    serve.add_argument("--api-tls-cert", metavar="PEM", help="serve the API over TLS with this")
    serve.add_argument("--api-tls-key", metavar="PEM", help="the TLS certificate's private key")
    serve.add_argument(
        "--api-tls-client-ca", metavar="PEM", help="require client certificates signed by this CA"
    )
    serve.add_argument(
        "--insecure-api",
        action="store_const",
        const=True,
        help="allow a plaintext API without a token on an address other hosts can reach",
    )
    serve.add_argument(
        "--metrics",
        metavar="HOST:PORT",
        help=f"where the Prometheus endpoint listens; empty turns it off (default {d.metrics})",
    )
    serve.add_argument(
        "--routing-http",
        metavar="HOST:PORT",
        help="where the Delegated Routing V1 HTTP API listens; empty turns it off "
        f"(default {d.routing_http})",
    )
    serve.add_argument(
        "--data-dir", metavar="DIR", help=f"the node's key and state (default {d.data_dir})"
    )
    serve.add_argument("--config", metavar="FILE", type=Path, help="TOML file of settings")
    serve.add_argument(
        "--log-level",
        metavar="LEVEL",
        help=f"debug, info, warning or error (default {d.log_level})",
    )
    serve.add_argument(
        "--log-format", choices=["text", "json"], help=f"log lines (default {d.log_format})"
    )
    serve.add_argument(
        "--event-loop",
        choices=["uvloop", "asyncio"],
        help=f"the asyncio event loop (default {d.event_loop})",
    )


def build_parser() -> Parser:
    parser = Parser(prog="shardroute", description=__doc__, epilog=EXIT_TABLE)
    parser.add_argument("--version", action="version", version=f"shardroute {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    _serve_parser(sub)

    ping = sub.add_parser(
        "ping",
        help="ping any libp2p node",
        description="Ping any libp2p node from a throwaway identity; show what identify says.",
        epilog=EXIT_TABLE,
    )
    ping.add_argument(
        "multiaddr", metavar="MULTIADDR", help="the node's address, ideally with /p2p/<id>"
    )
    ping.add_argument("--count", type=int, default=3, metavar="N", help="pings to send (default 3)")
    ping.add_argument(
        "--timeout", type=float, default=15.0, metavar="S", help="dial timeout (default 15 s)"
    )
    ping.add_argument("--json", action="store_true", help="print one JSON object")

    db = sub.add_parser("db", help="database maintenance", description="Database maintenance.")
    db_sub = db.add_subparsers(dest="db_command", required=True, parser_class=Parser)
    upgrade = db_sub.add_parser(
        "upgrade",
        help="apply schema migrations to a stopped node's database",
        description="Apply schema migrations to a stopped node's database.",
        epilog=EXIT_TABLE,
    )
    upgrade.add_argument(
        "--data-dir", metavar="DIR", help=f"the node's data folder (default {DEFAULTS.data_dir})"
    )
    upgrade.add_argument("--config", metavar="FILE", type=Path, help="TOML file of settings")
    upgrade.add_argument(
        "--create", action="store_true", help="make a new database if the folder has none"
    )

    add_client_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    as_json = bool(getattr(args, "json", False))
    try:
        if args.command == "serve":
            from shardroute.cli.serve import serve

            return serve(args)
        if args.command == "ping":
            import anyio

            from shardroute.cli.ping import ping

            return int(anyio.run(ping, args, backend="asyncio"))
        if args.command == "db":
            from shardroute.cli.db import db_upgrade

            return db_upgrade(args)
        return run_client_command(args)
    except CliError as exc:
        return report(args.command, exc, as_json=as_json)
    except ShardrouteError as exc:
        return report(args.command, CliError(Exit.FAILED, str(exc)), as_json=as_json)
    except BaseExceptionGroup as group:
        # start-up errors from inside the event loop's task groups: one line, no traceback
        single = group.exceptions[0] if len(group.exceptions) == 1 else None
        while isinstance(single, BaseExceptionGroup) and len(single.exceptions) == 1:
            single = single.exceptions[0]
        if isinstance(single, ShardrouteError):
            return report(args.command, CliError(Exit.FAILED, str(single)), as_json=as_json)
        raise
