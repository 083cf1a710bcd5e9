"""Peers for the hostile-network tests, run as a script on a testbed host:

    python tests/support/hostile.py MODE TARGET [options]

TARGET is the victim's /ip4/.../tcp/4001/p2p/<id> address. Every mode prints JSON lines on
stdout: `{"event": "ready", ...}` once its work is in place, and `{"event": "done", ...}` with
its counts when it ends (for the holding modes: when stdin closes).

- `connections`: idle TCP sockets, sockets that start multistream and stall, and one real
  libp2p connection carrying streams that never finish negotiating; all held (and, for the
  ones the victim drops, opened again) until stdin closes. Per kind it counts the slots asked
  for, those opened and begun at least once, and those held since the test's last `mark`
  line on stdin (a `report` line asks for the counts in between).
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


# -- the connection attack ---------------------------------------------------------------------


@dataclasses.dataclass
class Counts:
    """One kind of held resource (idle sockets, stalled negotiations, streams), as the attacker
    saw it: `slots` of them asked for, each held by one task that opens it again when dropped."""

    slots: int = 0
    opened: int = 0  # connects or stream opens that succeeded, reopening included
    slots_opened: int = 0  # of the slots, those opened at least once
    # Of the slots, those whose work began at least once: for an idle socket its connect, for
    # a stalled negotiation or a stream its multistream header sent.
    slots_begun: int = 0
    open_now: int = 0
    peak_open: int = 0
    connect_failed: int = 0
    dropped_by_victim: int = 0
    # Since the test's last `mark`: opens, and begun ones (reopening included), and the slots
    # held at some moment (held at the mark, or begun since).
    opened_since_mark: int = 0
    begun_since_mark: int = 0
    held_since_mark: set[int] = dataclasses.field(default_factory=set)
    _holding: set[int] = dataclasses.field(default_factory=set)
    _begun: set[int] = dataclasses.field(default_factory=set)

    def opening(self, first: bool) -> None:
        self.opened += 1
        self.opened_since_mark += 1
        self.slots_opened += first
        self.open_now += 1
        self.peak_open = max(self.peak_open, self.open_now)

    def begun(self, slot: int) -> None:
        """`slot`'s socket or stream is now doing its part of the attack."""
        self._begun.add(slot)
        self.slots_begun = len(self._begun)
        self.begun_since_mark += 1
        self._holding.add(slot)
        self.held_since_mark.add(slot)

    def closed(self, slot: int) -> None:
        self.open_now -= 1
        self._holding.discard(slot)

    def mark(self) -> None:
        self.opened_since_mark = self.begun_since_mark = 0
        self.held_since_mark = set(self._holding)

    def as_dict(self) -> dict[str, int]:
        fields = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if not f.name.startswith("_") and f.name != "held_since_mark"
        }
        return {**fields, "held_since_mark": len(self.held_since_mark)}


async def hold_socket(
    ip: str, port: int, slot: int, *, stall: bool, counts: Counts, limiter: anyio.CapacityLimiter
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
        counts.opening(first)
        first = False
        try:
            if stall:
                await sock.send(MULTISTREAM_HEADER)
            counts.begun(slot)
            while True:
                await sock.receive()  # whatever the victim says; we never answer
        except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
            counts.dropped_by_victim += 1
        finally:
            counts.closed(slot)
            with anyio.CancelScope(shield=True):
                await sock.aclose()
        await anyio.sleep(REOPEN_DELAY)


async def hold_stream(conn: MuxedConnection, slot: int, counts: Counts) -> None:
    """One stream that says the multistream header and never proposes a protocol."""
    first = True
    while not conn.closed:
        try:
            stream = await conn.open_stream()
        except ShardrouteError:
            counts.connect_failed += 1
            await anyio.sleep(REOPEN_DELAY)
            continue
        counts.opening(first)
        first = False
        try:
            await stream.send(MULTISTREAM_HEADER)
            counts.begun(slot)
            while True:
                await stream.receive()
        except (ShardrouteError, anyio.EndOfStream, anyio.BrokenResourceError):
            counts.dropped_by_victim += 1
        finally:
            counts.closed(slot)
        await anyio.sleep(REOPEN_DELAY)


async def connections(args: argparse.Namespace) -> None:
    raise_fd_limit()
    target = parse_multiaddr(args.target)
    transport, _ = split_p2p(target)
    endpoint = tcp_endpoint(transport)
    assert endpoint is not None
    ip, port = endpoint
    idle, stalled, streams = Counts(args.idle), Counts(args.stalled), Counts(args.streams)
    kinds = {"idle": idle, "stalled": stalled, "streams": streams}

    def report() -> dict[str, dict[str, int]]:
        return {name: counts.as_dict() for name, counts in kinds.items()}

    limiter = anyio.CapacityLimiter(100)  # connects in flight: a burst, not a SYN storm
    async with Host(Ed25519PrivateKey.generate()) as host, anyio.create_task_group() as tg:
        # The real connection first: once the sockets hold this address's pending-upgrade
        # slots, the victim upgrades nothing more from here (that is the budget working).
        conn = await host.dial(target)
        for slot in range(args.stalled):
            tg.start_soon(
                partial(hold_socket, ip, port, slot, stall=True, counts=stalled, limiter=limiter)
            )
        for slot in range(args.idle):
            tg.start_soon(
                partial(hold_socket, ip, port, slot, stall=False, counts=idle, limiter=limiter)
            )
        for slot in range(args.streams):
            tg.start_soon(hold_stream, conn, slot, streams)
        # Ready once every socket and every stream began its part at least once (our own Yamux
        # lets 256 streams at most await the victim's ACK: the rest retry), or after 60 s with
        # `complete` false: the counts say how far it got.
        start = time.monotonic()
        with anyio.move_on_after(60):
            while any(c.slots_begun < c.slots for c in kinds.values()):  # noqa: ASYNC110
                await anyio.sleep(0.2)  # a poll of plain counters
        complete = all(c.slots_begun == c.slots for c in kinds.values())
        emit(event="ready", complete=complete, seconds=time.monotonic() - start, **report())
        # Each line on stdin: `mark` starts a window (held_since_mark counts from there),
        # `report` says the counts now; the end of stdin ends the attack.
        while line := await anyio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True):
            if line.strip() == "mark":
                for counts in kinds.values():
                    counts.mark()
            emit(event=line.strip(), connection_open=not conn.closed, **report())
        emit(event="done", connection_open=not conn.closed, **report())
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
