"""Connection-stack benchmark: Noise+Yamux handshakes per second and stream throughput on loopback.

    python bench/bench_stack.py [--seconds S] [--no-write]

Measures shardroute to shardroute (both ends in this process, so one core serves both sides of
every handshake and every byte) and writes a section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

import anyio
from multiaddr import Multiaddr

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import write_section
from shardroute.addrs import parse_multiaddr, with_p2p
from shardroute.identity.keys import Ed25519PrivateKey
from shardroute.net.host import Host
from shardroute.net.muxer import MuxedStream
from tests.interop.thirdparty import start_peer

SINK = "/bench/sink/1.0.0"
LOOPBACK = parse_multiaddr("/ip4/127.0.0.1/tcp/0")


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def sink(stream: MuxedStream) -> None:
    total = 0
    try:
        while True:
            total += len(await stream.receive(1 << 20))
    except anyio.EndOfStream:
        pass
    await stream.send(str(total).encode())
    await stream.aclose()


async def handshakes(seconds: float) -> tuple[float, float]:
    """Sequential dials: full TCP + multistream + Noise XX + Yamux negotiation each time."""
    async with Host(Ed25519PrivateKey.generate(), listen_addrs=[LOOPBACK]) as server:
        target = with_p2p(server.listen_addrs[0], server.peer_id)
        async with Host(Ed25519PrivateKey.generate()) as client:
            count = 0
            cpu0, t0 = cpu_seconds(), time.perf_counter()
            while time.perf_counter() - t0 < seconds:
                conn = await client.dial(target)
                await conn.close()
                count += 1
            wall = time.perf_counter() - t0
            cpu = cpu_seconds() - cpu0
    return count / wall, count / cpu


async def throughput(streams: int, total_bytes: int) -> float:
    async with Host(Ed25519PrivateKey.generate(), listen_addrs=[LOOPBACK]) as server:
        server.set_stream_handler(SINK, sink)
        async with Host(Ed25519PrivateKey.generate()) as client:
            await client.dial(with_p2p(server.listen_addrs[0], server.peer_id))
            per_stream = total_bytes // streams
            chunk = os.urandom(1 << 20)

            async def one() -> None:
                stream = await client.new_stream(server.peer_id, [SINK])
                left = per_stream
                while left:
                    n = min(left, len(chunk))
                    await stream.send(chunk[:n])
                    left -= n
                await stream.send_eof()
                assert int(await stream.receive()) == per_stream

            t0 = time.perf_counter()
            async with anyio.create_task_group() as tg:
                for _ in range(streams):
                    tg.start_soon(one)
            wall = time.perf_counter() - t0
    return per_stream * streams / wall / 1e6


async def go_handshakes(target: Multiaddr, seconds: float) -> tuple[float, float]:
    async with Host(Ed25519PrivateKey.generate()) as client:
        count = 0
        cpu0, t0 = cpu_seconds(), time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            conn = await client.dial(target)
            await conn.close()
            count += 1
        return count / (time.perf_counter() - t0), count / (cpu_seconds() - cpu0)


async def go_throughput(target: Multiaddr, streams: int, total_bytes: int) -> float:
    async with Host(Ed25519PrivateKey.generate()) as client:
        conn = await client.dial(target)
        per_stream = total_bytes // streams
        chunk = os.urandom(1 << 20)

        async def one() -> None:
            stream = await client.new_stream(conn.remote_peer, [SINK])
            left = per_stream
            while left:
                n = min(left, len(chunk))
                await stream.send(chunk[:n])
                left -= n
            await stream.send_eof()
            assert int(await stream.receive()) == per_stream

        t0 = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for _ in range(streams):
                tg.start_soon(one)
        return per_stream * streams / (time.perf_counter() - t0) / 1e6


async def main(args: argparse.Namespace) -> None:
    hs_wall, hs_cpu = await handshakes(args.seconds)
    one = await throughput(1, args.megabytes * 1_000_000)
    sixteen = await throughput(16, args.megabytes * 1_000_000)
    async with start_peer("go-v0.20") as go:  # the wheel peer: it serves the sink protocol
        target = parse_multiaddr(go.addrs[0])
        go_hs_wall, go_hs_cpu = await go_handshakes(target, args.seconds)
        go_one = await go_throughput(target, 1, args.go_megabytes * 1_000_000)
        go_sixteen = await go_throughput(target, 16, args.go_megabytes * 1_000_000)
    body = f"""
Script: `bench/bench_stack.py`. All on 127.0.0.1. shardroute → shardroute runs both hosts in one
process, so one core does the work of both ends (dialer and listener); CPU figures are that
process's. shardroute → go: the go node (go-libp2p v0.24 in PyPI `libp2p-go`) is a separate
process; its sink is a Python callback through the bindings' ctypes layer, which reads 1 MiB at a
time, so those throughput figures bound the go side's bindings more than our stack.

| measure | shardroute → shardroute | shardroute → go | aim |
|---|---|---|---|
| Noise+Yamux handshakes per second (sequential dials, wall) | {hs_wall:.0f} | {go_hs_wall:.0f} | ≥ 300 |
| handshakes per CPU-second of this process | {hs_cpu:.0f} | {go_hs_cpu:.0f} | |
| throughput, 1 stream | {one:.1f} MB/s | {go_one:.1f} MB/s | ≥ 100 MB/s |
| throughput, 16 streams | {sixteen:.1f} MB/s | {go_sixteen:.1f} MB/s | |

Volumes: {args.megabytes} MB per shardroute run, {args.go_megabytes} MB per go run.
"""
    print(body)
    if not args.no_write:
        write_section("Connection stack (issue 2)", body)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--megabytes", type=int, default=256)
    parser.add_argument("--go-megabytes", type=int, default=64)
    parser.add_argument("--no-write", action="store_true")
    anyio.run(main, parser.parse_args(), backend="asyncio")
