"""What tests read off a running node process: its memory and its Prometheus counters."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from tests.support.testbed import NetHost

HOSTILE = str(Path(__file__).resolve().parent / "hostile.py")
_SAMPLE = re.compile(
    r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>[^}]*)\})? (?P<value>\S+)$"
)
_LABEL = re.compile(r'(\w+)="([^"]*)"')


def status_kib(pid: int, field: str) -> int:
    """A `/proc/<pid>/status` size in KiB: VmRSS (resident now), VmHWM (its peak)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for pid {pid}")


def scrape(host: NetHost, port: int = 9464) -> str:
    """The metrics page of the node on `host` (its metrics listen on the host's loopback)."""
    script = (
        "import sys, urllib.request; "
        f"sys.stdout.write(urllib.request.urlopen('http://127.0.0.1:{port}/metrics', timeout=10)"
        ".read().decode())"
    )
    result = host.run(sys.executable, "-c", script, timeout=30)
    assert result.returncode == 0, result.stderr
    return result.stdout


def samples(text: str, name: str) -> dict[frozenset[tuple[str, str]], float]:
    """Every sample of metric `name`, keyed by its labels."""
    found = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match and match["name"] == name:
            labels = frozenset(_LABEL.findall(match["labels"] or ""))
            found[labels] = float(match["value"])
    return found


def refusals(text: str) -> dict[tuple[str, str], float]:
    """shardroute_resource_refusals_total by (scope, resource)."""
    return {
        (dict(labels)["scope"], dict(labels)["resource"]): value
        for labels, value in samples(text, "shardroute_resource_refusals_total").items()
    }
