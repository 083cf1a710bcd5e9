"""The CLI commands that talk to a running node over gRPC (`--grpc`, SHARDROUTE_GRPC)."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc

from shardroute.api.client import DEFAULT_ADDRESS, Client, ShardLike
from shardroute.content import ContentId
from shardroute.errors import InvalidCid

ANNOUNCE_BATCH = 1000
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")


def add_client_commands(sub: Any) -> None:
    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = sub.add_parser(
            name, help=help_text, description=help_text
        )
        parser.add_argument(
            "--grpc",
            metavar="HOST:PORT",
            default=os.environ.get("SHARDROUTE_GRPC", DEFAULT_ADDRESS),
            help=f"the node's gRPC address (default $SHARDROUTE_GRPC or {DEFAULT_ADDRESS})",
        )
        parser.add_argument("--json", action="store_true", help="machine-readable output")
        return parser

    announce = command("announce", "Announce shards this storage node holds.")
    announce.add_argument("shards", nargs="*", metavar="CID_OR_HASH")
    announce.add_argument("--file", type=Path, metavar="F", help="CIDs or hashes, one a line")
    announce.add_argument("--wait", action="store_true", help="wait until stored on the network")
    withdraw = command("withdraw", "Stop announcing shards.")
    withdraw.add_argument("shards", nargs="+", metavar="CID_OR_HASH")
    find = command("find", "Find providers of a shard, printed as they arrive.")
    find.add_argument("shard", metavar="CID")
    find.add_argument("--count", type=int, default=20, metavar="N")
    find.add_argument("--timeout", type=float, default=10.0, metavar="S")
    locate = command("locate", "Find enough providers to rebuild an erasure-coded object.")
    locate.add_argument("shards", nargs="+", metavar="CID")
    locate.add_argument("--need", type=int, required=True, metavar="K")
    locate.add_argument("--timeout", type=float, default=10.0, metavar="S")
    closest = command("closest", "The peers closest to a peer ID or CID.")
    closest.add_argument("key", metavar="KEY")
    connect = command("connect", "Dial a peer now.")
    connect.add_argument("multiaddr", metavar="MULTIADDR")
    mode = command("mode", "Switch the node's DHT mode now (until restart; --mode at start).")
    mode.add_argument("mode", choices=("server", "client"))
    command("peers", "The node's routing table.")
    command("status", "The node's state.")
    command("id", "The node's peer ID and addresses.")


def shard_arg(text: str) -> ShardLike:
    text = text.strip()
    return bytes.fromhex(text) if _HEX64.fullmatch(text) else text


class BadShardList(ValueError):
    """A shard given to announce is neither a CID nor a 64-hex-digit hash; nothing was sent."""


def _check_shard(text: str, where: str) -> None:
    try:
        ContentId.parse_cid_or_hash(text)
    except InvalidCid as exc:
        raise BadShardList(
            f"{where}: {text.strip()[:80]!r} is neither a CID nor a 64-hex-digit SHA-256 ({exc})"
        ) from None


def _file_lines(path: Path) -> Iterator[tuple[int, str]]:
    with path.open() as fh:
        for number, line in enumerate(fh, 1):
            if line.strip():
                yield number, line


def _count_checked(args: argparse.Namespace) -> int:
    """Every shard of the command line and of --file, checked before anything is sent: a bad
    line a million lines in must not leave the first 999,000 announced and the rest not."""
    for i, text in enumerate(args.shards):
        _check_shard(text, f"argument {i + 1}")
    total = len(args.shards)
    if args.file is not None:
        for number, line in _file_lines(args.file):
            _check_shard(line, f"{args.file}:{number}")
            total += 1
    return total


def _batches(args: argparse.Namespace) -> Iterator[list[ShardLike]]:
    batch = [shard_arg(s) for s in args.shards]
    if args.file is not None:
        for _, line in _file_lines(args.file):
            batch.append(shard_arg(line))
            if len(batch) >= ANNOUNCE_BATCH:
                yield batch
                batch = []
    if batch:
        yield batch


def run_client_command(args: argparse.Namespace) -> int:
    try:
        with Client(args.grpc, timeout=max(30.0, getattr(args, "timeout", 0.0))) as client:
            return _run(client, args)
    except grpc.RpcError as exc:
        code = exc.code().name if hasattr(exc, "code") else "ERROR"
        details = exc.details() if hasattr(exc, "details") else str(exc)
        print(f"shardroute {args.command}: {code}: {details}", file=sys.stderr)
        return 1


def _emit(args: argparse.Namespace, data: Any, human: str) -> None:
    print(json.dumps(data) if args.json else human, flush=True)


def _run(client: Client, args: argparse.Namespace) -> int:
    cmd = args.command
    if cmd == "announce":
        return _announce(client, args)
    if cmd == "withdraw":
        n = client.withdraw([shard_arg(s) for s in args.shards])
        _emit(args, {"withdrawn": n}, f"withdrew {n} shards")
        return 0
    if cmd == "find":
        found = 0
        for p in client.iter_providers(
            shard_arg(args.shard), count=args.count, timeout=args.timeout
        ):
            found += 1
            _emit(
                args,
                {"peer_id": p.peer_id, "addrs": list(p.addrs)},
                f"{p.peer_id} {' '.join(p.addrs)}",
            )
        return 0 if found else 1
    if cmd == "locate":
        items = client.locate(
            [shard_arg(s) for s in args.shards], need=args.need, timeout=args.timeout
        )
        for item in items:
            data = {
                "cid": item.cid,
                "index": item.index,
                "peer_id": item.provider.peer_id,
                "addrs": list(item.provider.addrs),
            }
            _emit(
                args,
                data,
                f"[{item.index}] {item.cid} {item.provider.peer_id} "
                + " ".join(item.provider.addrs),
            )
        return 0
    if cmd == "closest":
        peers = client.closest_peers(args.key)
        listed = [{"peer_id": p.peer_id, "addrs": list(p.addrs)} for p in peers]
        _emit(args, listed, "\n".join(f"{p.peer_id} {' '.join(p.addrs)}" for p in peers))
        return 0
    if cmd == "connect":
        peer, server = client.connect(args.multiaddr)
        _emit(
            args,
            {"peer_id": peer, "dht_server": server},
            f"connected to {peer}" + (" (DHT server)" if server else ""),
        )
        return 0
    if cmd == "peers":
        table = client.routing_table()
        table_rows: list[dict[str, Any]] = [
            {
                "peer_id": p.peer_id,
                "addrs": list(p.addrs),
                "bucket": p.bucket,
                "last_seen_seconds_ago": round(p.last_seen_seconds_ago, 1),
            }
            for p in table
        ]
        _emit(
            args,
            table_rows,
            "\n".join(f"{p.bucket:3d} {p.peer_id} {' '.join(p.addrs)}" for p in table),
        )
        return 0
    info = client.set_mode(args.mode) if cmd == "mode" else client.node_info()
    if cmd == "mode":
        _emit(args, {"mode": info.mode}, f"now in {info.mode} mode")
        return 0
    if cmd == "id":
        _emit(
            args,
            {"peer_id": info.peer_id, "addrs": list(info.addrs)},
            "\n".join([info.peer_id, *info.addrs]),
        )
        return 0
    status = {
        "peer_id": info.peer_id,
        "addrs": list(info.addrs),
        "mode": info.mode,
        "protocol": info.protocol,
        "routing_table_size": info.routing_table_size,
        "stored_records": info.stored_records,
        "announced_records": info.announced_records,
        "agent_version": info.agent_version,
        "connections": info.connections,
        "published_shards": info.published_shards,
        "publish_lookups": info.publish_lookups,
        "republish_backlog": info.republish_backlog,
    }
    _emit(args, status, "\n".join(f"{k}: {v}" for k, v in status.items()))
    return 0


def _announce(client: Client, args: argparse.Namespace) -> int:
    if not args.shards and args.file is None:
        print("shardroute announce: give CIDs or hashes, or --file", file=sys.stderr)
        return 2
    try:
        expected = _count_checked(args)
    except (BadShardList, OSError, UnicodeDecodeError) as exc:
        print(f"shardroute announce: {exc}; nothing was announced", file=sys.stderr)
        return 2
    total, fewest = 0, None
    progress = None
    # A bar for the operator watching a big file go in; never in a pipe or a log.
    if args.file is not None and sys.stderr.isatty():
        from rich.console import Console
        from rich.progress import MofNCompleteColumn, Progress, TimeRemainingColumn

        progress = Progress(
            *Progress.get_default_columns()[:-1],
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
        )
        progress.start()
        task = progress.add_task("announcing", total=expected)
    try:
        for batch in _batches(args):
            result = client.announce(batch, wait=args.wait)
            total += result.announced
            if result.stored_on is not None:
                fewest = result.stored_on if fewest is None else min(fewest, result.stored_on)
            if progress is not None:
                progress.update(task, completed=total)
    finally:
        if progress is not None:
            progress.stop()
    data: dict[str, Any] = {"announced": total}
    if args.wait:
        data["stored_on"] = fewest or 0
    human = f"announced {total} shards" + (
        f", stored on at least {fewest or 0} peers" if args.wait else ""
    )
    _emit(args, data, human)
    return 0
