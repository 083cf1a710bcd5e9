"""Reading py-spy's stacks of a shardroute node: where its busy samples are, by category and
by function, as the Markdown that bench_network.py prints."""

from __future__ import annotations

import collections
import functools
import re
import sys
from collections.abc import Callable
from pathlib import Path

# Samples per second. py-spy pauses the node for each (its idle detection needs that, and
# --nonblocking counted the event loop's epoll wait and aiosqlite's queue wait as busy).
PROFILE_RATE = 100
RAW = ("--format", "raw", "--output")  # collapsed stacks, one line per stack: "f (file:line);... n"

# A frame's category: the innermost frame that matches one decides a sample's.
CATEGORIES: list[tuple[str, Callable[[str, str], bool]]] = [
    (
        "thread hand-offs (self-pipe wake-ups: aiosqlite results)",
        lambda fn, f: fn in ("_write_to_self", "_read_from_self", "call_soon_threadsafe"),
    ),
    (
        "socket writes (asyncio transport write/send)",
        lambda fn, f: (
            (
                f.endswith("selector_events.py")
                and fn.startswith(("write", "_write", "_sock_send"))
                and not fn.endswith("_self")  # the self-pipe: a hand-off, counted above
            )
            or (f.endswith("socket.py") and fn.startswith("send"))
        ),
    ),
    (
        "socket reads (asyncio transport read)",
        lambda fn, f: (
            f.endswith("selector_events.py") and fn.startswith(("_read", "recv", "_sock_recv"))
        ),
    ),
    ("Noise encrypt/decrypt", lambda fn, f: "protocol/noise" in f or "cryptography" in f),
    ("Yamux framing", lambda fn, f: "protocol/yamux" in f),
    ("multistream-select", lambda fn, f: "multistream" in f or "net/negotiate" in f),
    ("protobuf encode/decode", lambda fn, f: "protobuf" in f or "_pb2" in f),
    ("SQLAlchemy (Core statements, its asyncio adapter)", lambda fn, f: "sqlalchemy" in f),
    (
        "aiosqlite / SQLite store",
        lambda fn, f: "aiosqlite" in f or "sqlite3" in f or "shardroute/store" in f,
    ),
    ("gRPC (the API)", lambda fn, f: "grpc" in f),
    ("identify", lambda fn, f: "identify" in f),
    ("logging", lambda fn, f: "logging/" in f),
    ("Kademlia (shardroute/kad)", lambda fn, f: "shardroute/kad" in f),
    ("connections, dialer, peerstore (shardroute/net)", lambda fn, f: "shardroute/net" in f),
    ("publisher (shardroute/maintenance)", lambda fn, f: "shardroute/maintenance" in f),
    ("other shardroute", lambda fn, f: "shardroute/" in f),
    ("anyio (streams, task groups, cancel scopes)", lambda fn, f: "anyio/" in f),
    ("asyncio event loop", lambda fn, f: "asyncio/" in f),
]
# Categories whose frames sit under others' too (a store write under a Kademlia handler):
# worth a share of every stack they appear in. The rest are layers everything runs on.
MEASURED = {
    c
    for c, _ in CATEGORIES
    if not c.startswith(("asyncio", "anyio", "other", "connections", "Kademlia", "publisher"))
}
ROOTS = re.compile(r"shardroute/(cli/|__main__\.py)")
FRAME = re.compile(r"^(?P<fn>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
# py-spy's idle detection did not work here (busy and waiting threads alike were sampled), so a
# sample whose innermost frame sits on a blocking call is counted as waiting: the event loop's
# epoll, a worker thread's queue get, a lock or condition wait, a thread whose target is C.
WAIT_LINE = re.compile(r"\.(get|poll|select|wait|acquire)\(|self\._target\(|\bwait\(")


def method(fn: str) -> str:
    return fn.rsplit(".", 1)[-1]  # py-spy names methods Class.name


@functools.cache
def source_line(file: str, line: int) -> str:
    """The text of `file` (as py-spy shortens it: relative to a sys.path entry) at `line`."""
    for base in sys.path:
        path = Path(base or ".") / file
        if path.is_file():
            lines = path.read_text(errors="replace").splitlines()
            return lines[line - 1] if 0 < line <= len(lines) else ""
    return ""


def frames(stack: str) -> list[tuple[str, str, int]]:
    out = []
    for part in stack.split(";"):
        m = FRAME.match(part.strip())
        out.append((m["fn"], m["file"], int(m["line"] or 0)) if m else (part.strip(), "", 0))
    return out


def summarize_profile(raw: str, name: str, cpu_s: float | None = None) -> str:
    samples = waits = 0
    by_category: collections.Counter[str] = collections.Counter()
    by_leaf: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    anywhere: collections.Counter[str] = collections.Counter()
    for text in raw.splitlines():
        stack, _, count = text.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        fs = frames(stack)
        fn, f, line = fs[-1]
        if WAIT_LINE.search(source_line(f, line)):
            waits += n
            continue
        samples += n
        by_leaf[f"{fn} ({f})"] += n
        # Entry points (cli, __main__) hold every sample: left out.
        for key in {f"{fn} ({f})" for fn, f, _ in fs if "shardroute/" in f and not ROOTS.search(f)}:
            inclusive[key] += n
        for c in {c for c, test in CATEGORIES for fn, f, _ in fs if test(method(fn), f)}:
            anywhere[c] += n
        for fn, f, _ in reversed(fs):
            cat = next((c for c, test in CATEGORIES if test(method(fn), f)), None)
            if cat:
                by_category[cat] += n
                break
        else:
            by_category["other (interpreter, stdlib)"] += n
    if not samples:
        return f"py-spy recorded no busy samples of {name}."

    def share(n: int) -> str:
        return f"{100 * n / samples:.1f} %"

    lines = [
        f"py-spy at {PROFILE_RATE} Hz on {name} over the provides: {samples:,} busy samples, "
        f"{waits:,} more on a blocking wait (left out). Shares are of the busy samples"
        + (
            f": {samples / PROFILE_RATE:.1f} s of thread time, against {cpu_s:.1f} s of CPU"
            " time of the node over the phase (a thread waiting for the GIL samples as busy,"
            " so the shares say where threads are rather than exact CPU)."
            if cpu_s is not None
            else "."
        ),
        "",
        "Where the samples are, by the innermost frame that belongs to a category:",
        "",
        "| category | share (innermost) | share (anywhere in the stack) |",
        "|---|---|---|",
        *(
            f"| {c} | {share(n)} | {share(anywhere[c]) if c in MEASURED else ''} |"
            for c, n in by_category.most_common()
        ),
        "",
        "Top functions by own time (the sampled innermost Python frame; C calls show as their caller):",
        "",
        "| function | share |",
        "|---|---|",
        *(f"| `{k}` | {share(n)} |" for k, n in by_leaf.most_common(15)),
        "",
        "Top shardroute functions by inclusive time:",
        "",
        "| function | share |",
        "|---|---|",
        *(f"| `{k}` | {share(n)} |" for k, n in inclusive.most_common(15)),
    ]
    return "\n".join(lines)
