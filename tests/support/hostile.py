"""Peers for the hostile-network tests, run as a script on a testbed host:

    python tests/support/hostile.py MODE TARGET [options]

TARGET is the victim's /ip4/.../tcp/4001/p2p/<id> address. Every mode prints JSON lines on
stdout: `{"event": "ready", ...}` once its work is in place, and `{"event": "done", ...}` with
its counts when it ends (for the holding modes: when stdin closes).

- `connections`: idle TCP sockets, sockets that start multistream and stall, and one real
  libp2p connection carrying streams that never finish negotiating; all held (and, for the
  ones the victim drops, opened again) until stdin closes.
- `honest`: a whole shardroute node (App) that connects to the victim, pings it and finds a
  provider of `--key`, each timed.
- `flood`: ADD_PROVIDER for many keys from one peer ID, then for one key from many fresh peer
  IDs, each request acknowledged by a PING on the same stream (the server answers a stream's
  requests in order, so the PING's answer means every record before it was handled).
- `query`: GET_PROVIDERS for `--key` sent to the victim alone, from a fresh peer ID.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import resource
import sys
import tempfile
import time
from collections.abc import Sequence
from functools import partial
from typing import Any

import anyio
import anyio.abc
from multiaddr import Multiaddr

from shardroute.addrs import parse_multiaddr, split_p2p, tcp_endpoint
from shardroute.app import App
from shardroute.config import load_settings
from shardroute.content import ContentId
from shardroute.errors import ShardrouteError
from shardroute.identity.keys import Ed25519PrivateKey
from shardroute.identity.peer_id import PeerId
from shardroute.kad.memory_repositories import MemoryStorage
from shardroute.kad.messages import (
    KadMessage,
    MessageType,
    PeerInfo,
    decode_message,
    encode_message,
)
from shardroute.net.host import Host
from shardroute.net.muxer import MuxedConnection
from shardroute.protocol.varint import LengthPrefixedReader, frame

KAD = "/icn/kad/1.0.0"
# multistream-select's first message: the uvarint length, then the header line.
MULTISTREAM_HEADER = frame(b"/multistream/1.0.0\n")
# How long a socket or stream the victim dropped waits before the attacker opens it again.
REOPEN_DELAY = 1.0


def emit(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


def shard_key(shard: str) -> bytes:
    return ContentId.from_shard_hash(bytes.fromhex(shard)).dht_key


def raise_fd_limit() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def stdin_closed() -> None:
    """Until the test closes our stdin (the signal to stop and report)."""
    await anyio.to_thread.run_sync(sys.stdin.read, abandon_on_cancel=True)


# -- the connection attack ---------------------------------------------------------------------


@dataclasses.dataclass
class Counts:
    opened: int = 0  # reopening included
    slots_opened: int = 0  # of the sockets or streams asked for, those opened at least once
    open_now: int = 0
    connect_failed: int = 0
    dropped_by_victim: int = 0

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


async def hold_socket(
    ip: str, port: int, *, stall: bool, counts: Counts, limiter: anyio.CapacityLimiter
) -> None:
    """One socket, idle or stalled after the multistream header, held until cancelled;
    opened again whenever the victim drops it."""
    first = True
    while True:
        try:
            async with limiter:
                with anyio.fail_after(10):
                    sock = await anyio.connect_tcp(ip, port)
        except (OSError, TimeoutError):
            counts.connect_failed += 1
            await anyio.sleep(REOPEN_DELAY)
            continue
        counts.opened += 1
        counts.slots_opened += first
        first = False
        counts.open_now += 1
        try:
            if stall:
                await sock.send(MULTISTREAM_HEADER)
            while True:
                await sock.receive()  # whatever the victim says; we never answer
        except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
            counts.dropped_by_victim += 1
        finally:
            counts.open_now -= 1
            with anyio.CancelScope(shield=True):
                await sock.aclose()
        await anyio.sleep(REOPEN_DELAY)


async def hold_stream(conn: MuxedConnection, counts: Counts) -> None:
    """One stream that says the multistream header and never proposes a protocol."""
    first = True
    while not conn.closed:
        try:
            stream = await conn.open_stream()
        except ShardrouteError:
            counts.connect_failed += 1
            await anyio.sleep(REOPEN_DELAY)
            continue
        counts.opened += 1
        counts.slots_opened += first
        first = False
        counts.open_now += 1
        try:
            await stream.send(MULTISTREAM_HEADER)
            while True:
                await stream.receive()
        except (ShardrouteError, anyio.EndOfStream, anyio.BrokenResourceError):
            counts.dropped_by_victim += 1
        finally:
            counts.open_now -= 1
        await anyio.sleep(REOPEN_DELAY)


async def connections(args: argparse.Namespace) -> None:
    raise_fd_limit()
    target = parse_multiaddr(args.target)
    transport, _ = split_p2p(target)
    endpoint = tcp_endpoint(transport)
    assert endpoint is not None
    ip, port = endpoint
    idle, stalled, streams = Counts(), Counts(), Counts()
    limiter = anyio.CapacityLimiter(100)  # connects in flight: a burst, not a SYN storm
    async with Host(Ed25519PrivateKey.generate()) as host, anyio.create_task_group() as tg:
        # The real connection first: once the sockets hold this address's pending-upgrade
        # slots, the victim upgrades nothing more from here (that is the budget working).
        conn = await host.dial(target)
        for _ in range(args.stalled):
            tg.start_soon(
                partial(hold_socket, ip, port, stall=True, counts=stalled, limiter=limiter)
            )
        for _ in range(args.idle):
            tg.start_soon(partial(hold_socket, ip, port, stall=False, counts=idle, limiter=limiter))
        for _ in range(args.streams):
            tg.start_soon(hold_stream, conn, streams)
        # Ready once every socket and every stream was opened at least once (our own Yamux
        # lets 256 streams at most await the victim's ACK: the rest retry).
        with anyio.move_on_after(60):
            while (  # noqa: ASYNC110 (a poll of plain counters)
                idle.slots_opened < args.idle
                or stalled.slots_opened < args.stalled
                or streams.slots_opened < args.streams
            ):
                await anyio.sleep(0.2)
        report = {"idle": idle.as_dict(), "stalled": stalled.as_dict()}
        emit(event="ready", **report, streams=streams.as_dict())
        await stdin_closed()
        report = {"idle": idle.as_dict(), "stalled": stalled.as_dict()}
        emit(event="done", **report, streams=streams.as_dict(), connection_open=not conn.closed)
        tg.cancel_scope.cancel()


# -- an honest shardroute node -----------------------------------------------------------------


async def honest(args: argparse.Namespace) -> None:
    settings = load_settings(
        env=os.environ,
        overrides={"listen": "/ip4/0.0.0.0/tcp/4001", "grpc_listen": "", "metrics": ""},
    )
    with tempfile.TemporaryDirectory() as data_dir:
        settings = dataclasses.replace(settings, data_dir=data_dir)
        app = App(settings, identity=Ed25519PrivateKey.generate(), storage=MemoryStorage())
        async with app:
            timings: dict[str, float] = {}
            start = time.monotonic()
            peer = await app.node.connect(parse_multiaddr(args.target))
            timings["connect"] = time.monotonic() - start
            start = time.monotonic()
            rtts = await app.host.ping(peer, 1)
            timings["ping"] = time.monotonic() - start
            start = time.monotonic()
            found: list[str] = []
            with anyio.move_on_after(30):
                async for info in app.find_providers(shard_key(args.key), args.count):
                    found.append(str(info.peer_id))
                    if len(found) >= args.count:
                        break
            timings["find"] = time.monotonic() - start
            emit(event="done", peer=str(peer), rtts=rtts, providers=found, seconds=timings)


# -- the record flood --------------------------------------------------------------------------


async def ask(conn: MuxedConnection, host: Host, messages: Sequence[KadMessage]) -> bool:
    """Send `messages` then a PING on one DHT stream; True once the PING is answered."""
    stream = await host.open_stream_on(conn, [KAD])
    ping = KadMessage(type=MessageType.PING)
    await stream.send(b"".join(frame(encode_message(m)) for m in (*messages, ping)))
    reader = LengthPrefixedReader(1 << 20)
    try:
        with anyio.fail_after(120):
            while (body := reader.next_message()) is None:
                reader.receive_data(await stream.receive())
    except (ShardrouteError, anyio.EndOfStream, TimeoutError):
        await stream.reset()
        return False
    await stream.aclose()
    return decode_message(body).type is MessageType.PING


def add_provider(key: bytes, me: PeerId, addrs: tuple[Multiaddr, ...]) -> KadMessage:
    return KadMessage(type=MessageType.ADD_PROVIDER, key=key, provider_peers=(PeerInfo(me, addrs),))


async def flood(args: argparse.Namespace) -> None:
    raise_fd_limit()
    target = parse_multiaddr(args.target)
    own = (parse_multiaddr(f"/ip4/{args.own_ip}/tcp/4001"),)
    summary: dict[str, Any] = {}

    # 1. One peer ID, many keys, over a few dozen streams of one connection.
    async with Host(Ed25519PrivateKey.generate()) as host:
        conn = await host.dial(target)
        keys = [
            hashlib.sha256(f"flood {host.peer_id} {i}".encode()).digest() for i in range(args.keys)
        ]
        messages = [
            add_provider(ContentId.from_shard_hash(k).dht_key, host.peer_id, own) for k in keys
        ]
        lanes = 32  # below the victim's 64 streams of one protocol per peer
        acked = 0

        async def lane(part: Sequence[KadMessage]) -> None:
            nonlocal acked
            if await ask(conn, host, part):
                acked += len(part)

        start = time.monotonic()
        async with anyio.create_task_group() as tg:
            for i in range(lanes):
                tg.start_soon(lane, messages[i::lanes])
        summary["keys_flooder"] = str(host.peer_id)
        summary["keys_acked"] = acked
        summary["keys_seconds"] = time.monotonic() - start

    # 2. Fresh peer IDs, each on its own connection: the shared key first, then keys of its own.
    shared = shard_key(args.key)
    sybils: list[str] = []
    delivered = 0
    failures = 0
    limiter = anyio.CapacityLimiter(6)  # below the victim's 8 pending upgrades per address

    async def sybil(n: int) -> None:
        nonlocal delivered, failures
        for _attempt in range(5):
            async with limiter:
                try:
                    async with Host(Ed25519PrivateKey.generate()) as host:
                        conn = await host.dial(target)
                        extra = [
                            hashlib.sha256(f"sybil {host.peer_id} {i}".encode()).digest()
                            for i in range(args.extra_keys)
                        ]
                        batch = [
                            add_provider(shared, host.peer_id, own),
                            *(
                                add_provider(
                                    ContentId.from_shard_hash(k).dht_key, host.peer_id, own
                                )
                                for k in extra
                            ),
                        ]
                        if await ask(conn, host, batch):
                            sybils.append(str(host.peer_id))
                            delivered += len(batch)
                            return
                except (ShardrouteError, OSError):
                    pass
                failures += 1
            await anyio.sleep(0.5)

    start = time.monotonic()
    async with anyio.create_task_group() as tg:
        for n in range(args.sybils):
            tg.start_soon(sybil, n)
    summary.update(
        sybils=sybils,
        sybil_records_acked=delivered,
        sybil_failures=failures,
        sybils_seconds=time.monotonic() - start,
    )
    emit(event="done", **summary)


# -- a direct question to the victim -----------------------------------------------------------


async def query(args: argparse.Namespace) -> None:
    async with Host(Ed25519PrivateKey.generate()) as host:
        conn = await host.dial(parse_multiaddr(args.target))
        stream = await host.open_stream_on(conn, [KAD])
        request = KadMessage(type=MessageType.GET_PROVIDERS, key=shard_key(args.key))
        await stream.send(frame(encode_message(request)))
        await stream.send_eof()
        reader = LengthPrefixedReader(1 << 22)
        with anyio.fail_after(30):
            while (body := reader.next_message()) is None:
                reader.receive_data(await stream.receive())
        reply = decode_message(body)
        emit(
            event="done",
            providers={str(p.peer_id): [str(a) for a in p.addrs] for p in reply.provider_peers},
        )


MODES = {"connections": connections, "honest": honest, "flood": flood, "query": query}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=sorted(MODES))
    parser.add_argument("target")
    parser.add_argument("--idle", type=int, default=1000)
    parser.add_argument("--stalled", type=int, default=200)
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--key", default="")
    parser.add_argument("--count", type=int, default=1, help="providers an honest find wants")
    parser.add_argument("--keys", type=int, default=10_000)
    parser.add_argument("--sybils", type=int, default=200)
    parser.add_argument("--extra-keys", type=int, default=10)
    parser.add_argument("--own-ip", default="127.0.0.1")
    args = parser.parse_args(argv)
    anyio.run(MODES[args.mode], args, backend="asyncio")


if __name__ == "__main__":
    main()
