"""Where one node's resident memory goes: the imports `serve` makes, then an idle `shardroute
serve` and an idle go peer, each alone on 127.0.0.1 (no peers: what every node pays first).

    .venv/bin/python bench/bench_memory.py [--write]

Readings from /proc: VmRSS split into anonymous and file-backed pages, and the mappings that
hold the most. The import step runs in a child that records, per top-level package, the RSS
its own import added (its dependencies' imports counted to them, not to it).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import write_section
from bench.netnodes import ControlPeer, ServeNode, memory_kib
from tests.interop.thirdparty import command_line, require

SETTLE = 3.0  # seconds an idle node runs before it is read
TOP = 8

# Run in a child: RSS added by each top-level package's own import, for what `serve` loads.
IMPORT_PROBE = r"""
import builtins, json, sys
def rss():
    for line in open('/proc/self/status'):
        if line.startswith('VmRSS'):
            return int(line.split()[1])
real, own, stack = builtins.__import__, {}, []
def counting(name, *args, **kwargs):
    if name in sys.modules:
        return real(name, *args, **kwargs)
    top, before = name.split('.')[0], rss()
    stack.append(0)
    try:
        return real(name, *args, **kwargs)
    finally:
        inner, grown = stack.pop(), rss() - before
        own[top] = own.get(top, 0) + grown - inner
        if stack:
            stack[-1] += grown
bare = rss()
builtins.__import__ = counting
import shardroute.cli.serve, shardroute.app
builtins.__import__ = real
print(json.dumps({"bare_kib": bare, "own": own, "modules": len(sys.modules)}))
"""


def mappings(pid: int) -> Counter[str]:
    """Resident kB per mapping, by file name ([heap], [anon] for the unnamed ones)."""
    held: Counter[str] = Counter()
    current = "[anon]"
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
            parts = line.split()
            current = parts[5].rsplit("/", 1)[-1] if len(parts) > 5 else "[anon]"
        elif line.startswith("Rss:"):
            held[current] += int(line.split()[1])
    return held


def mib(kib: float) -> str:
    return f"{kib / 1024:.1f}"


def idle_reading(pid: int) -> tuple[dict[str, int], Counter[str]]:
    time.sleep(SETTLE)
    return memory_kib(pid), mappings(pid)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help="write docs/benchmarks.md")
    args = parser.parse_args(argv)

    probe = subprocess.run(
        [sys.executable, "-c", IMPORT_PROBE], capture_output=True, text=True, check=True
    )
    imports = json.loads(probe.stdout.strip().splitlines()[-1])
    own: dict[str, int] = imports["own"]

    readings: list[tuple[str, dict[str, int], Counter[str]]] = []
    root = Path(tempfile.mkdtemp(prefix="shardroute-bench-memory-"))
    try:
        (root / "shardroute").mkdir()
        serve = ServeNode("shardroute", root / "shardroute" / "data", None, op_timeout=10)
        try:
            serve.wait_ready(60)
            serve.wait_joined(60)  # no bootstrap peers: SERVING once it has started
            readings.append(("shardroute serve", *idle_reading(serve.pid)))
        finally:
            serve.stop()
        require("go")
        (root / "go").mkdir()
        go = ControlPeer("go", command_line("go"), root / "go" / "go.log")
        try:
            go.wait_ready(60)
            readings.append(("go peer", *idle_reading(go.pid)))
        finally:
            go.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)

    grown = sum(own.values())
    lines = [
        "One node alone on 127.0.0.1, read after it ran idle for "
        f"{SETTLE:.0f} s (`bench/bench_memory.py`). MiB.",
        "",
        "| process | RSS | anonymous | file-backed | peak (VmHWM) |",
        "|---|---|---|---|---|",
        f"| python, nothing imported | {mib(imports['bare_kib'])} | | | |",
        f"| python, `serve`'s imports ({imports['modules']} modules) | "
        f"{mib(imports['bare_kib'] + grown)} | | | |",
    ]
    for label, fields, _ in readings:
        lines.append(
            f"| {label}, idle | {mib(fields['VmRSS'])} | {mib(fields['RssAnon'])} | "
            f"{mib(fields['RssFile'])} | {mib(fields['VmHWM'])} |"
        )
    if len(readings) == 2:
        ours, theirs = readings[0][1], readings[1][1]
        lines += [
            "",
            f"Idle, shardroute holds {mib(ours['VmRSS'] - theirs['VmRSS'])} MiB more than go "
            f"({ours['VmRSS'] / theirs['VmRSS']:.2f}x); its imports alone, before it runs, are "
            f"{mib(imports['bare_kib'] + grown)} MiB.",
        ]
    lines += [
        "",
        f"RSS each top-level package's own import added, of the {mib(grown)} MiB "
        f"the imports added (top {TOP}):",
        "",
        "| package | MiB |",
        "|---|---|",
    ]
    for name, kib in sorted(own.items(), key=lambda kv: -kv[1])[:TOP]:
        lines.append(f"| {name or '(relative)'} | {mib(kib)} |")
    for label, _, held in readings:
        lines += ["", f"{label}, idle: the mappings that hold the most", ""]
        lines += ["| mapping | MiB |", "|---|---|"]
        lines += [f"| {name} | {mib(kib)} |" for name, kib in held.most_common(TOP)]
    body = "\n".join(lines)
    print(body)
    if args.write:
        write_section("Memory of one idle node", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
