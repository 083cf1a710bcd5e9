"""A go-libp2p node (PyPI `libp2p-go`: go-libp2p + go-libp2p-kad-dht behind ctypes) driven by
JSON lines on stdin. Runs in its own virtualenv (its import name clashes with py-libp2p's).

Protocol: prints {"event": "ready", ...} once listening, then answers one JSON line per command
line {"id": N, "cmd": NAME, ...} with {"id": N, "ok": true, ...} or {"id": N, "ok": false,
"error": "..."}.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import sys
import time
import traceback

from libp2p.cid import Cid
from libp2p.dht import DHT, BucketSize, DhtModeEnum, Mode, NamespacedValidator, V1ProtocolOverride
from libp2p.main import (
    DefaultSecurity,
    DefaultTransports,
    Host,
    ListenAddrStrings,
    MuxerYamux,
    Ping,
)
from libp2p.peer import Peer, addr_info_from_p2p_addr
from libp2p.ping import PingChan, PingService
from libp2p.utils import GoString
from libp2p.validator import PublicKeyValidator

SINK = "/bench/sink/1.0.0"


def reply(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def sink(stream) -> None:
    total = 0
    try:
        while True:
            n, _ = await stream.read_bytes(1 << 20)
            if n <= 0:
                break
            total += n
    except Exception:
        pass
    await stream.write(str(total).encode())
    await stream.close()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--listen", default="/ip4/127.0.0.1/tcp/0")
    parser.add_argument("--protocol", default="/icn/kad/1.0.0")
    parser.add_argument("--mode", default="server", choices=["server", "client"])
    args = parser.parse_args()

    # The bindings' Yamux option wants the Go string type, which MuxerYamux builds from str.
    host = Host(
        ListenAddrStrings(args.listen),
        DefaultTransports,
        DefaultSecurity,
        MuxerYamux(GoString.new("/yamux/1.0.0")),
        Ping(True),
    )
    host.set_stream_handler(SINK, sink)
    mode = DhtModeEnum.ModeServer if args.mode == "server" else DhtModeEnum.ModeClient
    dht = await DHT.new(
        host,
        Mode(mode),
        V1ProtocolOverride(args.protocol),
        BucketSize(20),
        NamespacedValidator("pk", PublicKeyValidator()),
    )
    pinger = PingService(host)
    peer_id = str(host.id.string)
    addrs = [a for a in host.addrs]
    reply({"event": "ready", "peer_id": peer_id, "addrs": [f"{a}/p2p/{peer_id}" for a in addrs]})

    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            break
        try:
            request = json.loads(line)
        except ValueError:
            request = None
        # Anything but a JSON object with an id is refused with one error line (id null),
        # as the go and rust peers do; the peer keeps serving.
        if not isinstance(request, dict) or request.get("id") is None:
            rid = request.get("id") if isinstance(request, dict) else None
            reply({"id": rid, "ok": False, "error": f"unknown command {line.strip()}"})
            continue
        rid = request.get("id")
        try:
            result = await handle(request, host, dht, pinger)
            reply({"id": rid, "ok": True, **result})
            if request.get("cmd") == "stop":
                break
        except Exception as exc:  # every failure goes back to the test as text
            reply(
                {
                    "id": rid,
                    "ok": False,
                    "error": f"{type(exc).__name__}: {exc}",
                    "trace": traceback.format_exc()[-800:],
                }
            )
    await host.close()


async def handle(request: dict, host: Host, dht: DHT, pinger: PingService) -> dict:
    cmd = request.get("cmd")
    timeout = float(request.get("timeout_s", 20))
    if cmd == "dial":
        await asyncio.wait_for(host.connect(addr_info_from_p2p_addr(request["addr"])), timeout)
        return {}
    if cmd == "ping":
        count = int(request.get("count", 1))
        rtts = []
        # The binding casts its argument to a Go peer.ID, which holds the binary multihash.
        chan = PingChan(
            pinger._PING(pinger.handle, GoString.new(Peer.decode(request["peer_id"]).bytes)),
            loop=pinger.loop,
        )
        async for result in chan:
            if result.error:
                raise RuntimeError(result.error)
            rtts.append(result.rtt / 1e6)
            if len(rtts) >= count:
                break
        return {"rtt_ms": rtts}
    if cmd == "peer_info":
        return {"addrs": host.peer_store.addrs(request["peer_id"])}
    if cmd == "bootstrap":
        await dht.bootstrap()
        return {}
    if cmd == "provide":
        cid = Cid.decode(request["cid"])
        await asyncio.wait_for(dht.provide(cid, True), timeout)
        del cid
        return {}
    if cmd == "find_providers":
        # Keep the Cid referenced until Go is done with it: the bindings free an object's Go
        # handle when Python collects it.
        cid = Cid.decode(request["cid"])
        # libp2p-go 0.1.4's findProviders can hand back a provider left over from the previous
        # query (seen: js's provider of one CID returned for py's CID); asked again it answers
        # for the CID given. So ask twice and report the second answer (the first for reference).
        stale = await asyncio.wait_for(dht.find_providers(cid), timeout)
        found = await asyncio.wait_for(dht.find_providers(cid), timeout)
        del cid

        def listed(infos: list) -> list[dict]:
            return [
                {"peer_id": str(p.id.string), "addrs": [str(a) for a in p.addrs]} for p in infos
            ]

        return {"providers": listed(found), "first_answer": listed(stale)}
    if cmd == "put_value":
        await asyncio.wait_for(
            dht.put_value(
                base64.b64decode(request["key_b64"]), base64.b64decode(request["value_b64"])
            ),
            timeout,
        )
        return {}
    if cmd == "get_value":
        value = await asyncio.wait_for(dht.get_value(base64.b64decode(request["key_b64"])), timeout)
        return {"value_b64": base64.b64encode(value).decode() if value is not None else None}
    if cmd == "dht_ping":
        await dht.ping(Peer.decode(request["peer_id"]))
        return {}
    if cmd == "sink_send":
        peer = Peer.decode(request["peer_id"])
        stream = await host.new_stream(peer, request.get("protocol", SINK))
        data = b"x" * int(request["bytes"])
        t0 = time.perf_counter()
        await stream.write(data)
        await stream.close()
        return {"seconds": time.perf_counter() - t0}
    if cmd == "stop":
        return {}
    raise ValueError(f"unknown command {cmd}")


if __name__ == "__main__":
    asyncio.run(main())
