"""The CLI commands that talk to a running node over gRPC (`--grpc`, SHARDROUTE_GRPC).

Every shard, key and address is checked here before anything is sent, so bad input ends with
exit 2 and the same message whichever command got it. What comes back is printed for people
by default and as JSON with `--json` (errors too, on stderr).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import grpc

from shardroute.api.access import ClientCredentials
from shardroute.api.client import DEFAULT_ADDRESS, Client, ShardLike
from shardroute.cli import output
from shardroute.cli.outcome import EXIT_TABLE, CliError, Exit, from_rpc, unreachable
from shardroute.content import ContentId
from shardroute.errors import InvalidCid, InvalidPeerId, StartupError
from shardroute.identity.peer_id import PeerId

ANNOUNCE_BATCH = 1000
# How long a command waits for the node's gRPC port before it calls the node unreachable.
CONNECT_TIMEOUT = 3.0
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
_HOST_PORT = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[^:\s]+):(\d{1,5})$")


def grpc_target(text: str) -> str:
    """--grpc: HOST:PORT (an IPv6 host in brackets)."""
    match = _HOST_PORT.match(text.strip())
    if match is None or not 0 < int(match.group(2)) <= 65535:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not HOST:PORT (e.g. 127.0.0.1:7070); give the port too"
        )
    return text.strip()


def non_negative_int(text: str) -> int:
    """--quorum: a whole number >= 0 (the API's field is a uint32)."""
    try:
        number = int(text)
    except ValueError:
        number = -1
    if not 0 <= number <= 0xFFFFFFFF:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 0")
    return number


RECORD_KEY_HELP = (
    "the record key: /pk/<peer ID> or /ipns/<peer ID> (the peer ID as printed, sent as its "
    "bytes, as the DHT keys these records); any other key is sent as its text"
)
_PEER_KEYED = re.compile(r"/(pk|ipns)/(.*)", re.DOTALL)


def record_key(text: str) -> bytes:
    """A value record's DHT key from the command line. /pk/ and /ipns/ keys hold a peer ID's
    binary multihash (NUL bytes among them, which no argv can carry), so the CLI takes the
    peer ID in its printed form and sends its bytes."""
    match = _PEER_KEYED.fullmatch(text)
    if match is None:
        return os.fsencode(text)
    try:
        peer = PeerId.parse(match.group(2))
    except InvalidPeerId as exc:
        raise CliError(Exit.USAGE, f"key: {exc}") from None
    return f"/{match.group(1)}/".encode() + peer.raw


def add_client_commands(sub: Any) -> None:
    target = os.environ.get("SHARDROUTE_GRPC", DEFAULT_ADDRESS)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--grpc",
        metavar="HOST:PORT",
        type=grpc_target,
        default=target,
        help=f"the node's gRPC address ($SHARDROUTE_GRPC, else {DEFAULT_ADDRESS}; now {target})",
    )
    common.add_argument("--json", action="store_true", help="print JSON (errors too, on stderr)")
    for flag, env, what in (
        ("--token-file", "SHARDROUTE_TOKEN_FILE", "a file holding the node's API token"),
        ("--tls-ca", "SHARDROUTE_TLS_CA", "talk TLS, trusting this CA (PEM)"),
        ("--tls-cert", "SHARDROUTE_TLS_CERT", "client certificate (PEM), if the node wants one"),
        ("--tls-key", "SHARDROUTE_TLS_KEY", "the client certificate's key (PEM)"),
        ("--tls-server-name", "SHARDROUTE_TLS_SERVER_NAME", "name the node's certificate has"),
    ):
        common.add_argument(
            flag, metavar="FILE", default=os.environ.get(env, ""), help=f"{what} (${env})"
        )

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = sub.add_parser(
            name, help=help_text, description=help_text, parents=[common], epilog=EXIT_TABLE
        )
        return parser

    announce = command("announce", "Announce shards this storage node holds.")
    announce.add_argument("shards", nargs="*", metavar="CID_OR_HASH", help="CIDs or SHA-256 hex")
    announce.add_argument(
        "--file", metavar="F", help="CIDs or hashes, one a line; - (or a pipe) for standard input"
    )
    announce.add_argument(
        "--wait",
        action="store_true",
        help="return once the network stored them (default: once durable)",
    )
    withdraw = command("withdraw", "Stop announcing shards (the node's own record goes at once).")
    withdraw.add_argument("shards", nargs="+", metavar="CID_OR_HASH")
    find = command("find", "Find providers of a shard, printed as they arrive.")
    find.add_argument("shard", metavar="CID_OR_HASH")
    find.add_argument(
        "--count", type=int, default=20, metavar="N", help="providers wanted (default 20)"
    )
    find.add_argument(
        "--timeout", type=float, default=10.0, metavar="S", help="deadline (default 10 s)"
    )
    locate = command("locate", "Find enough providers to rebuild an erasure-coded object.")
    locate.add_argument("shards", nargs="+", metavar="CID_OR_HASH")
    locate.add_argument("--need", type=int, required=True, metavar="K", help="shards needed")
    locate.add_argument(
        "--per-shard", type=int, default=3, metavar="N", help="providers per shard (default 3)"
    )
    locate.add_argument(
        "--timeout", type=float, default=10.0, metavar="S", help="deadline (default 10 s)"
    )
    closest = command("closest", "The peers closest to a peer ID or CID.")
    closest.add_argument("key", metavar="PEER_ID_OR_CID")
    connect = command("connect", "Dial a peer now.")
    connect.add_argument("multiaddr", metavar="MULTIADDR", help="ending in /p2p/<peer ID>")
    mode = command("mode", "Switch the node's DHT mode now (until restart; --mode at start).")
    mode.add_argument("mode", choices=("server", "client"))
    get = command("get", "Read a value record (e.g. /pk/<peer ID>) from the DHT.")
    get.add_argument("key", metavar="KEY", help=RECORD_KEY_HELP)
    get.add_argument(
        "--quorum",
        type=non_negative_int,
        metavar="N",
        help="answers to wait for (default: the node's setting)",
    )
    put = command("put", "Store a value record in the DHT.")
    put.add_argument("key", metavar="KEY", help=RECORD_KEY_HELP)
    put.add_argument("value_file", metavar="FILE", help="the record's bytes; - for standard input")
    health = command(
        "health",
        "The node's gRPC health: SERVING (exit 0) once it joined the network, or at once without"
        " bootstrap peers; NOT_SERVING (exit 1) before that or while it shuts down.",
    )
    health.add_argument(
        "--timeout", type=float, default=5.0, metavar="S", help="deadline (default 5 s)"
    )
    command("peers", "The node's routing table.")
    command("status", "The node's state.")
    command("id", "The node's peer ID and the addresses to reach it at.")


def shard_arg(text: str, where: str) -> ShardLike:
    """A shard as the API takes it, checked: a CID in any form, or 64 hex digits."""
    text = text.strip()
    try:
        ContentId.parse_cid_or_hash(text)
    except InvalidCid as exc:
        raise CliError(
            Exit.USAGE,
            f"{where}: {text[:80]!r} is neither a CID nor a 64-hex-digit SHA-256 ({exc})",
        ) from None
    return bytes.fromhex(text) if _HEX64.fullmatch(text) else text


def shard_args(texts: list[str]) -> list[ShardLike]:
    return [shard_arg(t, f"argument {i + 1}") for i, t in enumerate(texts)]


def _open_input(name: str) -> IO[str]:
    if name == "-":
        return sys.stdin
    try:
        return Path(name).open()
    except OSError as exc:
        raise CliError(Exit.USAGE, f"{name}: {exc.strerror or exc}") from None


def spool_checked(name: str, spool: IO[str]) -> int:
    """Read the input once, check every line, write the shards to `spool`; how many. A bad
    line a million lines in must not leave the first 999,999 announced and the rest not."""
    count = 0
    source = _open_input(name)
    try:
        for number, line in enumerate(source, 1):
            if line.strip():
                shard_arg(line, f"{name}:{number}")
                spool.write(line.strip() + "\n")
                count += 1
    except UnicodeDecodeError as exc:
        raise CliError(Exit.USAGE, f"{name}: not text ({exc.reason})") from None
    finally:
        if source is not sys.stdin:
            source.close()
    spool.seek(0)
    return count


def _batches(first: list[ShardLike], spool: IO[str] | None) -> Iterator[list[ShardLike]]:
    batch = list(first)
    for line in spool or ():
        text = line.strip()
        batch.append(bytes.fromhex(text) if _HEX64.fullmatch(text) else text)
        if len(batch) >= ANNOUNCE_BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def run_client_command(args: argparse.Namespace) -> int:
    deadline = max(30.0, getattr(args, "timeout", 0.0) + 5.0)
    try:
        credentials = ClientCredentials.from_files(
            token_file=args.token_file,
            tls_ca=args.tls_ca,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            server_name=args.tls_server_name,
        )
    except StartupError as exc:
        raise CliError(Exit.USAGE, str(exc)) from None
    with Client(args.grpc, timeout=deadline, credentials=credentials) as client:
        if not client.wait_ready(CONNECT_TIMEOUT):
            raise unreachable(args.grpc)
        try:
            return _run(client, args)
        except grpc.RpcError as exc:
            raise from_rpc(exc, args.grpc) from None


def _run(client: Client, args: argparse.Namespace) -> int:
    handler = _COMMANDS[args.command]
    return handler(client, args)


def _announce(client: Client, args: argparse.Namespace) -> int:
    if not args.shards and args.file is None:
        raise CliError(Exit.USAGE, "give CIDs or hashes, or --file")
    first = shard_args(args.shards)
    with tempfile.TemporaryFile("w+") as spool:
        total = len(first)
        if args.file is not None:
            try:
                total += spool_checked(args.file, spool)
            except CliError as exc:
                raise CliError(exc.code, f"{exc.message}; nothing was announced") from None
        stored, fewest = 0, None
        with output.progress("announcing", total, enabled=args.file is not None) as advance:
            for batch in _batches(first, spool if args.file is not None else None):
                result = client.announce(batch, wait=args.wait)
                stored += result.announced
                if result.stored_on is not None:
                    fewest = result.stored_on if fewest is None else min(fewest, result.stored_on)
                advance(len(batch))
    data: dict[str, Any] = {"announced": stored}
    human = f"announced {stored} shards"
    if args.wait:
        data["stored_on"] = fewest or 0
        human += f", stored on at least {fewest or 0} peers"
    output.emit(args, data, human)
    return Exit.OK


def _withdraw(client: Client, args: argparse.Namespace) -> int:
    n = client.withdraw(shard_args(args.shards))
    output.emit(args, {"withdrawn": n}, f"withdrew {n} shards")
    return Exit.OK


def _find(client: Client, args: argparse.Namespace) -> int:
    shard = shard_arg(args.shard, "shard")
    found = []
    for p in client.iter_providers(shard, count=args.count, timeout=args.timeout):
        found.append({"peer_id": p.peer_id, "addrs": list(p.addrs)})
        if not args.json:
            print(f"{p.peer_id} {' '.join(p.addrs)}", flush=True)
    if args.json:
        output.print_json(found)
    elif not found:
        print("no providers found", flush=True)
    return Exit.OK if found else Exit.NOT_FOUND


def _locate(client: Client, args: argparse.Namespace) -> int:
    shards = shard_args(args.shards)
    items = []
    for item in client.locate(
        shards, need=args.need, per_shard=args.per_shard, timeout=args.timeout
    ):
        row = {
            "cid": item.cid,
            "index": item.index,
            "peer_id": item.provider.peer_id,
            "addrs": list(item.provider.addrs),
        }
        items.append(row)
        if not args.json:
            print(
                f"[{item.index}] {item.cid} {item.provider.peer_id} {' '.join(item.provider.addrs)}"
            )
    if args.json:
        output.print_json(items)
    return Exit.OK


def _closest(client: Client, args: argparse.Namespace) -> int:
    key = args.key.strip()
    try:
        PeerId.parse(key)
    except InvalidPeerId:
        shard_arg(key, "key")
    peers = client.closest_peers(key)
    listed = [{"peer_id": p.peer_id, "addrs": list(p.addrs)} for p in peers]
    output.emit(args, listed, "\n".join(f"{p.peer_id} {' '.join(p.addrs)}" for p in peers))
    return Exit.OK


def _connect(client: Client, args: argparse.Namespace) -> int:
    peer, server = client.connect(args.multiaddr)
    output.emit(
        args,
        {"peer_id": peer, "dht_server": server},
        f"connected to {peer}" + (" (a DHT server, now in the routing table)" if server else ""),
    )
    return Exit.OK


def _mode(client: Client, args: argparse.Namespace) -> int:
    info = client.set_mode(args.mode)
    output.emit(args, {"mode": info.mode}, f"now in {info.mode} mode")
    return Exit.OK


def _peers(client: Client, args: argparse.Namespace) -> int:
    table = client.routing_table()
    if args.json:
        output.print_json(
            [
                {
                    "peer_id": p.peer_id,
                    "addrs": list(p.addrs),
                    "bucket": p.bucket,
                    "last_seen_seconds_ago": round(p.last_seen_seconds_ago, 1),
                }
                for p in table
            ]
        )
    elif not table:
        print("the routing table is empty: the node has no peers yet (see --bootstrap, connect)")
    else:
        output.table(
            ["BUCKET", "PEER ID", "LAST SEEN", "ADDRESSES"],
            [
                [
                    str(p.bucket),
                    p.peer_id,
                    f"{p.last_seen_seconds_ago:.0f} s ago",
                    " ".join(p.addrs),
                ]
                for p in table
            ],
        )
    return Exit.OK


def _status(client: Client, args: argparse.Namespace) -> int:
    info = client.node_info()
    addrs = [f"{a}/p2p/{info.peer_id}" for a in info.addrs]
    data = {
        "peer_id": info.peer_id,
        "addrs": addrs,
        "mode": info.mode,
        "protocol": info.protocol,
        "agent_version": info.agent_version,
        "routing_table_size": info.routing_table_size,
        "connections": info.connections,
        "stored_records": info.stored_records,
        "announced_records": info.announced_records,
        "published_shards": info.published_shards,
        "publish_lookups": info.publish_lookups,
        "republish_backlog": info.republish_backlog,
    }
    if args.json:
        output.print_json(data)
    else:
        output.fields(
            [
                ("peer ID", info.peer_id),
                ("agent", info.agent_version),
                ("mode", f"{info.mode} ({info.protocol})"),
                ("routing table", f"{info.routing_table_size} peers"),
                ("connections", str(info.connections)),
                ("records stored", f"{info.stored_records} (for other providers)"),
                ("shards announced", str(info.announced_records)),
                (
                    "published",
                    f"{info.published_shards} since start, {info.publish_lookups} lookups",
                ),
                ("republish backlog", f"{info.republish_backlog} due now"),
                ("addresses", addrs),
            ]
        )
    return Exit.OK


def _id(client: Client, args: argparse.Namespace) -> int:
    info = client.node_info()
    addrs = [f"{a}/p2p/{info.peer_id}" for a in info.addrs]
    if args.json:
        output.print_json({"peer_id": info.peer_id, "addrs": addrs})
    else:
        output.fields([("peer ID", info.peer_id), ("addresses", addrs)])
    return Exit.OK


def _get(client: Client, args: argparse.Namespace) -> int:
    value = client.get_value(record_key(args.key), quorum=args.quorum)
    if value is None:
        if args.json:
            output.print_json({"key": args.key, "found": False})
        else:
            print(f"no value found for {args.key}")
        return Exit.NOT_FOUND
    if args.json:
        output.print_json({"key": args.key, "found": True, "value_hex": value.hex()})
    else:
        sys.stdout.buffer.write(value)
        sys.stdout.flush()
    return Exit.OK


def _put(client: Client, args: argparse.Namespace) -> int:
    key = record_key(args.key)
    if args.value_file == "-":
        value = sys.stdin.buffer.read()
    else:
        try:
            value = Path(args.value_file).read_bytes()
        except OSError as exc:
            raise CliError(Exit.USAGE, f"{args.value_file}: {exc.strerror or exc}") from None
    stored_on = client.put_value(key, value)
    output.emit(args, {"key": args.key, "stored_on": stored_on}, f"stored on {stored_on} peers")
    return Exit.OK


def _health(client: Client, args: argparse.Namespace) -> int:
    status = client.health(timeout=args.timeout)
    human = (
        status
        if status == "SERVING"
        else f"{status}: the node has not joined the network yet, or is stopping"
    )
    output.emit(args, {"status": status}, human)
    return Exit.OK if status == "SERVING" else Exit.FAILED


_COMMANDS = {
    "announce": _announce,
    "withdraw": _withdraw,
    "find": _find,
    "locate": _locate,
    "closest": _closest,
    "connect": _connect,
    "mode": _mode,
    "peers": _peers,
    "status": _status,
    "id": _id,
    "get": _get,
    "put": _put,
    "health": _health,
}
