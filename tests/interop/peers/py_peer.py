"""A py-libp2p node (PyPI `libp2p`, trio) driven by JSON lines on stdin, like go_peer.py.
Runs in its own virtualenv."""

from __future__ import annotations

import argparse
import base64
import importlib
import json
import pkgutil
import sys
import traceback

import libp2p.kad_dht
import multiaddr
import trio
from libp2p import new_host
from libp2p.custom_types import TProtocol
from libp2p.host.ping import PingService
from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo, info_from_p2p_addr
from libp2p.tools.anyio_service.context import background_trio_service


def use_protocol(protocol: str) -> None:
    # py-libp2p imports its DHT protocol ID as a constant into several modules; its prefix
    # option does not reach them, so each copy is replaced before the DHT starts.
    for module_info in pkgutil.iter_modules(libp2p.kad_dht.__path__):
        module = importlib.import_module(f"libp2p.kad_dht.{module_info.name}")
        if hasattr(module, "PROTOCOL_ID"):
            module.PROTOCOL_ID = TProtocol(protocol)


def reply(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--listen", default="/ip4/127.0.0.1/tcp/0")
    parser.add_argument("--protocol", default="/icn/kad/1.0.0")
    parser.add_argument("--mode", default="server", choices=["server", "client"])
    args = parser.parse_args()
    use_protocol(args.protocol)

    host = new_host()
    async with host.run(listen_addrs=[multiaddr.Multiaddr(args.listen)]):
        mode = DHTMode.SERVER if args.mode == "server" else DHTMode.CLIENT
        dht = KadDHT(host, mode)
        async with background_trio_service(dht):
            peer_id = host.get_id().to_base58()
            addrs = [str(a) for a in host.get_addrs()]
            addrs = [a if "/p2p/" in a else f"{a}/p2p/{peer_id}" for a in addrs]
            reply({"event": "ready", "peer_id": peer_id, "addrs": addrs})
            stdin = trio.wrap_file(sys.stdin)
            while True:
                line = await stdin.readline()
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
                try:
                    with trio.fail_after(float(request.get("timeout_s", 20))):
                        result = await handle(request, host, dht)
                    reply({"id": request.get("id"), "ok": True, **result})
                except Exception as exc:
                    reply(
                        {
                            "id": request.get("id"),
                            "ok": False,
                            "error": f"{type(exc).__name__}: {exc}",
                            "trace": traceback.format_exc()[-800:],
                        }
                    )
                if request.get("cmd") == "stop":
                    break


async def handle(request: dict, host, dht: KadDHT) -> dict:
    cmd = request.get("cmd")
    store = host.get_peerstore()
    if cmd == "dial":
        info = info_from_p2p_addr(multiaddr.Multiaddr(request["addr"]))
        await host.connect(info)
        return {}
    if cmd == "ping":
        rtts = await PingService(host).ping(
            ID.from_base58(request["peer_id"]), int(request.get("count", 1))
        )
        return {"rtt_ms": [r / 1000 for r in rtts]}
    if cmd == "peer_info":
        pid = ID.from_base58(request["peer_id"])
        try:
            agent = store.get(pid, "AgentVersion")
        except Exception:
            agent = None
        return {
            "protocols": list(store.get_protocols(pid)),
            "addrs": [str(a) for a in store.addrs(pid)],
            "agent": agent,
        }
    if cmd == "add_peer":
        pid = ID.from_base58(request["peer_id"])
        if request.get("addrs"):
            store.add_addrs(pid, [multiaddr.Multiaddr(a) for a in request["addrs"]], 3600)
        return {"added": bool(await dht.add_peer(pid))}
    if cmd == "routing_table":
        peers = [p.to_base58() for p in dht.routing_table.get_peer_ids()]
        return {"size": dht.get_routing_table_size(), "peers": peers}
    if cmd == "closest_peers":
        closest = await dht.peer_routing.find_closest_peers_network(
            base64.b64decode(request["key_b64"]), int(request.get("count", 20))
        )
        return {"peers": [p.to_base58() for p in closest]}
    if cmd == "bootstrap":
        await dht.refresh_routing_table()
        return {}
    if cmd == "provide":
        return {"stored": bool(await dht.provide(request["cid"]))}
    if cmd == "find_providers":
        found: list[PeerInfo] = await dht.find_providers(
            request["cid"], int(request.get("count", 20))
        )
        return {
            "providers": [
                {"peer_id": p.peer_id.to_base58(), "addrs": [str(a) for a in p.addrs]}
                for p in found
            ]
        }
    if cmd == "put_value":
        await dht.put_value(
            base64.b64decode(request["key_b64"]).decode("latin-1"),
            base64.b64decode(request["value_b64"]),
        )
        return {}
    if cmd == "get_value":
        value = await dht.get_value(base64.b64decode(request["key_b64"]).decode("latin-1"))
        return {"value_b64": base64.b64encode(value).decode() if value is not None else None}
    if cmd == "stop":
        return {}
    raise ValueError(f"unknown command {cmd}")


if __name__ == "__main__":
    trio.run(main)
