"""The protocol cores and the pure Kademlia modules never touch sockets, tasks or clocks."""

from __future__ import annotations

import subprocess
import sys

PURE = [
    "shardroute.protocol.varint",
    "shardroute.protocol.multistream",
    "shardroute.protocol.noise",
    "shardroute.protocol.yamux",
    "shardroute.protocol.identify",
    "shardroute.kad.keyspace",
    "shardroute.kad.routing_table",
    "shardroute.kad.lookup",
    "shardroute.kad.messages",
    "shardroute.kad.records",
]


def test_pure_modules_import_no_io() -> None:
    code = (
        "import sys\n"
        f"for name in {PURE!r}: __import__(name)\n"
        "bad = [m for m in ('anyio', 'asyncio', 'socket', 'trio') if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
