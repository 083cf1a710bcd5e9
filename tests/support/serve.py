"""`shardroute serve` and the CLI as real subprocesses: one helper for every test and benchmark
that runs a node the way an operator does."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}
SHARDROUTE = [sys.executable, "-m", "shardroute"]


def free_port(host: str = "127.0.0.1") -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def cli(
    port: int | None,
    *args: str,
    json: bool = True,
    timeout: float = 60,
    input: str | None = None,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a client command against the node whose gRPC port is `port`."""
    target = ["--grpc", f"127.0.0.1:{port}"] if port is not None else []
    return subprocess.run(
        [*SHARDROUTE, *args, *target, *(["--json"] if json else [])],
        capture_output=True,
        text=True,
        timeout=timeout,
        input=input,
        env={**ENV, **(env or {})},
    )


def wait_serving(port: int, seconds: float = 30) -> None:
    """Until the node on gRPC `port` answers `id` (a poll: the node is another process)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if cli(port, "id").returncode == 0:
            return
        time.sleep(0.2)
    raise AssertionError(f"gRPC on {port} never answered")


@dataclass
class ServeProcess:
    proc: subprocess.Popen[str]
    addrs: list[str]  # the lines serve printed: full /p2p/ multiaddrs
    grpc_port: int
    data_dir: Path
    log_path: Path
    log_offset: int = 0  # where this start's lines begin in the log

    def cli(self, *args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
        return cli(self.grpc_port, *args, **kwargs)  # type: ignore[arg-type]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    @contextmanager
    def paused(self) -> Iterator[None]:
        """The node stopped (SIGSTOP) inside the block: its connections stay open and every
        request to it waits unanswered, as with a peer that hangs. SIGCONT on the way out."""
        self.proc.send_signal(signal.SIGSTOP)
        try:
            yield
        finally:
            self.proc.send_signal(signal.SIGCONT)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_log(self, text: str, seconds: float = 30) -> str:
        """The first log line (from this start on) containing `text`; polls the log file."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for line in self.log()[self.log_offset :].splitlines():
                if text in line:
                    return line
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"no log line with {text!r}:\n{self.log()[self.log_offset :]}")


@contextmanager
def serve(
    data_dir: Path,
    *extra: str,
    listen: Sequence[str] = ("/ip4/127.0.0.1/tcp/0",),
    lines: int | None = None,
    grpc_port: int | None = None,
    metrics_port: int = 0,
    routing_http_port: int = 0,
    env: Mapping[str, str] | None = None,
    wait: bool = True,
    grpc_flag: bool = True,
) -> Iterator[ServeProcess]:
    """Start `shardroute serve` on `data_dir`; yields once it printed its addresses (`lines`
    of them, by default one per `listen`) and, with `wait`, answers gRPC. Its log goes to
    `<data_dir>.log`. Stopped with SIGTERM on the way out (SIGKILL after 10 s).

    Without `grpc_flag` no `--grpc` is passed, so the node binds what its other settings say
    (e.g. SHARDROUTE_GRPC_LISTEN in `env`); `grpc_port` must then be that port."""
    if not grpc_flag and grpc_port is None:
        raise ValueError("without grpc_flag, give the grpc_port the node's settings bind")
    port = grpc_port or free_port()
    log_path = data_dir.parent / f"{data_dir.name}.log"
    command = [*SHARDROUTE, "serve", "--data-dir", str(data_dir)]
    for addr in listen:
        command += ["--listen", addr]
    if grpc_flag:
        command += ["--grpc", f"127.0.0.1:{port}"]
    command += ["--metrics", f"127.0.0.1:{metrics_port}"]
    command += ["--routing-http", f"127.0.0.1:{routing_http_port}", *extra]
    offset = len(log_path.read_text(errors="replace")) if log_path.exists() else 0
    with log_path.open("a") as log:
        proc = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            env={**ENV, **(env or {})},
            start_new_session=True,
        )
    try:
        assert proc.stdout is not None
        addrs = [proc.stdout.readline().strip() for _ in range(lines or len(listen))]
        if not all(addrs):
            proc.wait(timeout=10)
            raise AssertionError(f"serve exited early: {log_path.read_text(errors='replace')}")
        if wait:
            wait_serving(port)
        yield ServeProcess(proc, addrs, port, data_dir, log_path, offset)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)  # a paused node would hold its SIGTERM
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        proc.wait(timeout=10)
