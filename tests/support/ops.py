"""The real operations programs the deploy and monitoring tests run: Prometheus (Debian's
package), systemd-analyze and grpcurl, installed by scripts/install-ops-tools.sh."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.serve import free_port

CACHE = Path(os.environ.get("SHARDROUTE_INTEROP_CACHE", Path.home() / ".cache/shardroute-interop"))


def tool(name: str) -> str:
    """The path of `name` (on PATH or in the interop cache); a missing tool fails the test."""
    found = shutil.which(name) or shutil.which(name, path=str(CACHE / "bin"))
    assert found, f"{name} is not installed: run scripts/install-ops-tools.sh"
    return found


@dataclass
class Prometheus:
    url: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def api(self, path: str, **params: str | float) -> Any:
        """`data` of a Prometheus HTTP API answer; fails on an error status."""
        query = urllib.parse.urlencode(params, doseq=True)
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as reply:
            body = json.loads(reply.read())
        assert body["status"] == "success", body
        return body["data"]

    def wait(self, expr: str, seconds: float = 30) -> list[Any]:
        """Until the instant query `expr` has a result (a poll: Prometheus is another process)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            result: list[Any] = self.api("query", query=expr)["result"]
            if result:
                return result
            assert self.proc.poll() is None, self.log_path.read_text(errors="replace")
            time.sleep(0.5)
        raise AssertionError(f"{expr} never had a result")


@contextmanager
def prometheus(workdir: Path, targets: Sequence[str], interval: str = "1s") -> Iterator[Prometheus]:
    """A real Prometheus scraping `targets` every `interval`, its data in `workdir`."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "prometheus.yml"
    config.write_text(
        json.dumps(  # JSON is YAML
            {
                "global": {"scrape_interval": interval, "scrape_timeout": interval},
                "scrape_configs": [
                    {"job_name": "shardroute", "static_configs": [{"targets": list(targets)}]}
                ],
            }
        )
    )
    address = f"127.0.0.1:{free_port()}"
    log_path = workdir / "prometheus.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [
                tool("prometheus"),
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address={address}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = Prometheus(f"http://{address}", proc, log_path)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, log_path.read_text(errors="replace")
            try:
                with urllib.request.urlopen(f"{server.url}/-/ready", timeout=2) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, log_path.read_text(errors="replace")
            time.sleep(0.2)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
