"""Node processes for bench_network.py: `shardroute serve` driven through the blocking client,
and the go and js interop peers driven over their JSON-lines control protocol. Blocking code
with threads, so that every step has its own deadline and every process can be killed from the
main thread (also on Ctrl-C)."""

from __future__ import annotations

import json
import math
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from shardroute.api.client import Client

ROOT = Path(__file__).resolve().parent.parent
CLOCK_TICK = os.sysconf("SC_CLK_TCK")
REDIAL_AFTER = 10.0  # seconds a joining go/js peer waits for the seed in its table


class NodeFailure(RuntimeError):
    """A node process failed a step; the message carries the tail of its log."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- /proc -------------------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str]:
    text = Path(f"/proc/{pid}/stat").read_text()
    # The command name may hold spaces and parentheses: the fields start after the last ')'.
    return text[text.rindex(")") + 2 :].split()


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int(_stat_fields(int(entry.name))[1])
            except (OSError, ValueError, IndexError):
                continue
            tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def cpu_seconds(pids: Sequence[int]) -> dict[int, float]:
    """utime+stime of each process and its live descendants, plus its waited-for children's
    (cutime+cstime), in seconds; a process that is gone is left out."""
    tree = _children()
    out: dict[int, float] = {}
    for pid in pids:
        ticks = 0
        stack, seen = [pid], set()
        while stack:
            p = stack.pop()
            if p in seen:
                continue
            seen.add(p)
            try:
                # utime, stime, cutime, cstime: fields 14-17 of stat (11-14 after the name).
                ticks += sum(int(f) for f in _stat_fields(p)[11:15])
            except (OSError, ValueError):
                if p == pid:
                    break
                continue
            stack.extend(tree.get(p, ()))
        else:
            out[pid] = ticks / CLOCK_TICK
    return out


def memory_kib(pid: int) -> dict[str, int]:
    """The kB fields of /proc/<pid>/status that say how much is resident (VmRSS, VmHWM,
    RssAnon, RssFile)."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            fields[name] = int(value.split()[0])
    return fields


def peak_rss_mib(pid: int) -> float:
    """VmHWM: the most resident memory the process ever had."""
    peak = memory_kib(pid).get("VmHWM")
    if peak is None:
        raise NodeFailure(f"no VmHWM in /proc/{pid}/status")
    return peak / 1024


# -- processes ----------------------------------------------------------------------------------


class NodeProcess:
    """One node: its own process group (so a kill takes its children too), stderr to a log
    file, stdout read line by line by a thread into a queue."""

    def __init__(self, name: str, command: list[str], log_path: Path, env: dict[str, str]) -> None:
        self.name = name
        self.log_path = log_path
        self.spawned = time.monotonic()
        self.ready_at: float | None = None
        self.joined_at: float | None = None
        self.lock = threading.Lock()  # one operation at a time on a node
        self.lines: queue.Queue[str | None] = queue.Queue()
        with log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                env=env,
                cwd=ROOT,
                start_new_session=True,
            )
        self._reader = threading.Thread(target=self._read, name=f"{name}-stdout", daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self.lines.put(raw.decode(errors="replace").strip())
        self.lines.put(None)

    def next_line(self, timeout: float, what: str) -> str:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise self.failure(f"no {what} within {timeout:.0f} s") from None
        if line is None:
            self.lines.put(None)  # later readers see the end too
            raise self.failure(f"exited (code {self.proc.poll()}) before {what}")
        return line

    def tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join("    " + line for line in text.splitlines()[-lines:]) or "    (log empty)"

    def failure(self, what: str) -> NodeFailure:
        code = self.proc.poll()
        state = "running" if code is None else f"exit code {code}"
        return NodeFailure(
            f"{self.name} (pid {self.pid}, {state}): {what}\n  last lines of {self.log_path}:\n"
            f"{self.tail()}"
        )

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise self.failure("died")

    def stop(self, grace: float = 3.0) -> None:
        """SIGTERM to the group, SIGKILL after `grace` seconds."""
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            if self.proc.poll() is not None:
                break
            try:
                os.killpg(self.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue
        try:  # the group may outlive its leader
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass


def _clean_env() -> dict[str, str]:
    # The user's own SHARDROUTE_* settings would reach every node: leave them out.
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHARDROUTE_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


class ServeNode(NodeProcess):
    """`shardroute serve` from this worktree (`python -m shardroute` with cwd at its root)."""

    def __init__(self, name: str, data_dir: Path, bootstrap: str | None, op_timeout: float) -> None:
        self.grpc_port = free_port()
        command = [
            sys.executable,
            "-m",
            "shardroute",
            "serve",
            "--data-dir",
            str(data_dir),
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--grpc",
            f"127.0.0.1:{self.grpc_port}",
            "--metrics",
            "",  # off: 32 Prometheus endpoints are not part of the work
            "--routing-http",
            "",  # off too (and its default port would be taken 31 times)
            *(["--bootstrap", bootstrap] if bootstrap else []),
        ]
        super().__init__(name, command, data_dir.parent / f"{name}.log", _clean_env())
        self.addr = ""
        self.client = Client(f"127.0.0.1:{self.grpc_port}", timeout=op_timeout)

    def wait_ready(self, timeout: float) -> None:
        """Until serve printed its /p2p/ address (it does so once it listens)."""
        self.addr = self.next_line(timeout, "listen address on stdout")
        if "/p2p/" not in self.addr:
            raise self.failure(f"printed {self.addr!r}, not a /p2p/ multiaddr")
        self.ready_at = time.monotonic()

    def wait_joined(self, timeout: float) -> None:
        """Until health says SERVING: with bootstrap peers serve says so once it has joined."""
        deadline = time.monotonic() + timeout
        channel = grpc.insecure_channel(f"127.0.0.1:{self.grpc_port}")
        try:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise self.failure(f"not joined (health SERVING) within {timeout:.0f} s")
                try:
                    for reply in stub.Watch(
                        health_pb2.HealthCheckRequest(service=""), timeout=left
                    ):
                        if reply.status == health_pb2.HealthCheckResponse.SERVING:
                            self.joined_at = time.monotonic()
                            return
                except grpc.RpcError as exc:
                    self.check_alive()
                    if exc.code() != grpc.StatusCode.UNAVAILABLE:
                        raise self.failure(
                            f"health watch: {exc.code().name} {exc.details()}"
                        ) from None
                    time.sleep(0.1)  # the gRPC port is bound before the address is printed
        finally:
            channel.close()

    def provide(self, cid: str) -> int:
        """Announce and wait; the number of peers that took the record."""
        result = self.client.announce([cid], wait=True)
        if not result.stored_on:
            raise RuntimeError(f"announce --wait: stored on {result.stored_on} peers")
        return result.stored_on

    def find(self, cid: str, timeout: float) -> list[str]:
        return [p.peer_id for p in self.client.find_providers(cid, count=1, timeout=timeout)]

    @property
    def peer_id(self) -> str:
        return self.addr.rsplit("/p2p/", 1)[1]

    def stop(self, grace: float = 3.0) -> None:
        self.client.close()
        super().stop(grace)


class ControlPeer(NodeProcess):
    """A go or js interop peer (tests/interop/peers): one JSON line per command and answer."""

    def __init__(self, name: str, command: list[str], log_path: Path) -> None:
        super().__init__(
            name,
            [*command, "--listen", "/ip4/127.0.0.1/tcp/0", "--mode", "server"],
            log_path,
            _clean_env(),
        )
        self.peer_id = ""
        self.addr = ""
        self.redials = 0
        self._ids = 0

    def wait_ready(self, timeout: float) -> None:
        line = self.next_line(timeout, "ready line")
        try:
            ready = json.loads(line)
        except json.JSONDecodeError:
            raise self.failure(f"printed {line!r}, not JSON") from None
        if ready.get("event") != "ready":
            raise self.failure(f"first line is not the ready event: {line}")
        self.peer_id = ready["peer_id"]
        self.addr = next(a for a in ready["addrs"] if "/127.0.0.1/" in a)
        self.ready_at = time.monotonic()

    def command(self, name: str, timeout: float, **args: Any) -> dict[str, Any]:
        """Send one command and wait for its answer (the peer's own deadline is `timeout`;
        ours is a few seconds more). One at a time: callers hold `self.lock` when they share
        the peer between threads."""
        assert self.proc.stdin is not None
        timeout = max(
            1, math.ceil(timeout)
        )  # whole seconds: js's AbortSignal.timeout takes whole ms
        self._ids += 1
        request = {"id": self._ids, "cmd": name, "timeout_s": timeout, **args}
        try:
            self.proc.stdin.write((json.dumps(request) + "\n").encode())
            self.proc.stdin.flush()
        except OSError as exc:
            raise self.failure(f"writing {name}: {exc}") from None
        deadline = time.monotonic() + timeout + 5
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise self.failure(f"no answer to {name} within {timeout + 5:.0f} s")
            answer = json.loads(self.next_line(left, f"answer to {name}"))
            if answer.get("id") == self._ids:
                break
        if not answer.get("ok"):
            raise RuntimeError(f"{name}: {answer.get('error')}")
        return dict(answer)

    def join(self, seed: str, timeout: float) -> None:
        """Dial the seed, wait until it is in the routing table, then bootstrap. js admits a
        new contact only if one ping answers within its adaptive timeout (5 s at least), which
        a busy seed can miss, and then never asks again on that connection: so after
        REDIAL_AFTER seconds without the seed, hang up and dial again (counted in `redials`)."""
        deadline = time.monotonic() + timeout
        seed_id = seed.rsplit("/p2p/", 1)[1]
        while True:
            self.command("dial", max(1.0, deadline - time.monotonic()), addr=seed)
            # The table takes the seed in once identify has shown its DHT protocol, which go
            # and js do after the dial returns; bootstrap before that finds no one to ask.
            retry_at = min(deadline, time.monotonic() + REDIAL_AFTER)
            while not self.command("routing_table", timeout)["size"]:
                if time.monotonic() > retry_at:
                    break
                time.sleep(0.05)
            else:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the seed never entered the routing table in {timeout:.0f} s "
                    f"({self.redials} redials)"
                )
            try:
                self.command("hangup", 10, peer_id=seed_id)
            except RuntimeError:
                pass  # a peer without `hangup` (go): the next dial reuses the connection
            self.redials += 1
        self.command("bootstrap", timeout)
        self.joined_at = time.monotonic()

    def provide(self, cid: str, timeout: float) -> None:
        self.command("provide", timeout, cid=cid)

    def find(self, cid: str, timeout: float) -> list[str]:
        answer = self.command("find_providers", timeout, cid=cid, count=1)
        return [p["peer_id"] for p in answer["providers"]]
