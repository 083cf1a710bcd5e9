"""The layers run one way: sans-IO cores and the pure Kademlia modules touch no sockets, tasks
or clocks, and the connection stack knows nothing of Kademlia."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "shardroute"

PURE = [
    "shardroute.protocol.varint",
    "shardroute.protocol.multistream",
    "shardroute.protocol.noise",
    "shardroute.protocol.yamux",
    "shardroute.protocol.identify",
    "shardroute.protocol.events",
    "shardroute.protocol.protobuf",
    "shardroute.kad.address_book",
    "shardroute.kad.cbor",
    "shardroute.kad.config",
    "shardroute.kad.diversity",
    "shardroute.kad.fairness",
    "shardroute.kad.handler",
    "shardroute.kad.keyspace",
    "shardroute.kad.lookup",
    "shardroute.kad.memory_repositories",
    "shardroute.kad.messages",
    "shardroute.kad.records",
    "shardroute.kad.regions",
    "shardroute.kad.reports",
    "shardroute.kad.repositories",
    "shardroute.kad.routing_table",
    "shardroute.kad.stream_pool",
    "shardroute.kad.transport",
]
IO_MODULES = ("anyio", "asyncio", "socket", "trio")


def test_pure_modules_import_no_io_and_no_clock() -> None:
    code = (
        "import sys\n"
        f"before = set(sys.modules)\n"
        f"for name in {PURE!r}: __import__(name)\n"
        f"bad = [m for m in {IO_MODULES!r} if m in sys.modules and m not in before]\n"
        f"bad += [n for n in {PURE!r} if hasattr(sys.modules[n], 'time')]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def test_net_imports_nothing_of_kad_and_protocol_nothing_above_it() -> None:
    offenders = []
    for layer, forbidden in (
        ("net", ("shardroute.kad", "shardroute.maintenance", "shardroute.api", "shardroute.app")),
        ("protocol", ("shardroute.net", "shardroute.kad", "shardroute.store")),
        ("kad", ("shardroute.api", "shardroute.app", "shardroute.store", "shardroute.cli")),
        ("store", ("shardroute.net", "shardroute.api", "shardroute.app")),
    ):
        for path in sorted((PACKAGE / layer).rglob("*.py")):
            bad = {m for m in _imports(path) if m.startswith(forbidden)}
            offenders += [f"{path.relative_to(PACKAGE)} imports {m}" for m in sorted(bad)]
    assert offenders == []


def test_no_hand_written_module_is_over_600_lines() -> None:
    long = [
        f"{p.relative_to(PACKAGE)}: {n}"
        for p in PACKAGE.rglob("*.py")
        if "pb" not in p.relative_to(PACKAGE).parts and (n := len(p.read_text().splitlines())) > 600
    ]
    assert long == []
