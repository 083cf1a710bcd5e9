"""`shardroute announce --file` against a real `shardroute serve`: a big file goes in whole,
with a progress bar on a terminal and none in a pipe; a bad line anywhere announces nothing."""

from __future__ import annotations

import hashlib
import json
import os
import pty
import select
import subprocess
import time
from pathlib import Path

import base58
import pytest

from shardroute.content import ContentId
from tests.support.serve import ENV, SHARDROUTE, cli, free_port, serve

pytestmark = pytest.mark.network


def shard_lines(count: int) -> list[str]:
    """Half raw hex hashes, a quarter CIDv1 in base32, a quarter CIDv0."""
    lines = []
    for i in range(count):
        digest = hashlib.sha256(f"shard {i}".encode()).digest()
        if i % 2:
            lines.append(digest.hex())
        elif i % 4:
            lines.append(str(ContentId.from_shard_hash(digest)))
        else:
            lines.append(base58.b58encode(b"\x12\x20" + digest).decode())
    return lines


def announced(port: int) -> int:
    result = cli(port, "status")
    assert result.returncode == 0, result.stderr
    return int(json.loads(result.stdout)["announced_records"])


def announce_on_a_terminal(port: int, path: Path) -> tuple[int, str, str]:
    """Run `announce --file` with stderr on a pseudo-terminal; (exit code, stdout, terminal)."""
    grpc = f"127.0.0.1:{port}"
    controller, terminal = pty.openpty()
    proc = subprocess.Popen(
        [*SHARDROUTE, "announce", "--file", str(path), "--grpc", grpc],
        stdout=subprocess.PIPE,
        stderr=terminal,
        text=True,
        env={**ENV, "COLUMNS": "120", "TERM": "xterm"},
    )
    os.close(terminal)
    screen = bytearray()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ready, _, _ = select.select([controller], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            screen += chunk
        elif proc.poll() is not None:
            break
    os.close(controller)
    out, _ = proc.communicate(timeout=30)
    return proc.returncode, out, screen.decode(errors="replace")


def test_announce_file_goes_in_whole_with_a_progress_bar_on_a_terminal(tmp_path: Path) -> None:
    port = free_port()
    lines = shard_lines(25_000)
    path = tmp_path / "shards.txt"
    # blank lines and stray whitespace are what real files have
    path.write_text("\n".join(lines[:10]) + "\n\n  " + "\n".join(lines[10:]) + "  \n")
    with serve(tmp_path / "a", grpc_port=port):
        code, out, screen = announce_on_a_terminal(port, path)
        assert code == 0, screen
        assert out.strip() == "announced 25000 shards"
        assert "announcing" in screen
        assert "25000/25000" in screen  # the bar knows the total from the checking pass
        assert announced(port) == 25_000

        # In a pipe (as scripts run it): no bar, JSON out.
        more = tmp_path / "more.txt"
        more.write_text("\n".join(shard_lines(25_100)[25_000:]) + "\n")
        result = cli(port, "announce", "--file", str(more))
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout) == {"announced": 100}
        assert result.stderr == ""
        assert announced(port) == 25_100


@pytest.mark.parametrize(
    ("bad", "named"),
    [
        ("bafyBAD", ":2501:"),
        (hashlib.sha256(b"x").hexdigest()[:62], ":2501:"),  # a hash one byte short
        ("zzzz not a cid", ":2501:"),
    ],
)
def test_a_bad_line_anywhere_announces_nothing(tmp_path: Path, bad: str, named: str) -> None:
    port = free_port()
    lines = shard_lines(3000)
    lines.insert(2500, bad)
    path = tmp_path / "shards.txt"
    path.write_text("\n".join(lines) + "\n")
    with serve(tmp_path / "a", grpc_port=port):
        result = cli(port, "announce", "--file", str(path))
        assert result.returncode == 2
        assert named in result.stderr
        assert "nothing was announced" in result.stderr
        assert announced(port) == 0

        missing = cli(port, "announce", "--file", str(tmp_path / "absent.txt"))
        assert missing.returncode == 2
        assert "absent.txt" in missing.stderr
        # the node is unharmed and takes the good lines
        path.write_text("\n".join(lines[:2500]) + "\n")
        assert cli(port, "announce", "--file", str(path)).returncode == 0
        assert announced(port) == 2500
