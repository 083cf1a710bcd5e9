"""Real third-party libp2p nodes as subprocesses on 127.0.0.1, driven by JSON lines.

`scripts/install-interop-peers.sh` puts each implementation in `.interop/`; a missing one is
an error with the install command in its message, never a skip.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import anyio
from anyio.abc import Process

ROOT = Path(__file__).resolve().parents[2]
INTEROP = ROOT / ".interop"
PEERS = Path(__file__).resolve().parent / "peers"
CACHE = Path(
    os.environ.get("SHARDROUTE_INTEROP_CACHE", Path.home() / ".cache" / "shardroute-interop")
)
# go: go-libp2p-kad-dht v0.42 built from peers/go; go-v0.20: the PyPI libp2p-go wheel (2023).
Kind = Literal["rust", "go", "go-v0.20", "js", "py"]
KINDS: tuple[Kind, ...] = ("rust", "go", "go-v0.20", "js", "py")


class PeerCommandError(RuntimeError):
    pass


def command_line(kind: Kind) -> list[str]:
    if kind == "rust":
        return [str(CACHE / "bin" / "rust-peer")]
    if kind == "go":
        return [str(CACHE / "bin" / "go-peer")]
    if kind == "go-v0.20":
        return [str(INTEROP / "go-venv" / "bin" / "python"), str(PEERS / "go_peer.py")]
    if kind == "py":
        return [str(INTEROP / "py-venv" / "bin" / "python"), str(PEERS / "py_peer.py")]
    return ["node", str(PEERS / "js" / "peer.mjs")]


def require(kind: Kind) -> None:
    probe = {
        "rust": CACHE / "bin" / "rust-peer",
        "go": CACHE / "bin" / "go-peer",
        "go-v0.20": INTEROP / "go-venv" / "bin" / "python",
        "py": INTEROP / "py-venv" / "bin" / "python",
        "js": PEERS / "js" / "node_modules" / "libp2p",
    }[kind]
    if not probe.exists():
        raise RuntimeError(
            f"the {kind} interop peer is not installed ({probe} missing): "
            "run scripts/install-interop-peers.sh"
        )


@dataclass
class ThirdPartyPeer:
    kind: Kind
    protocol: str = "/icn/kad/1.0.0"
    mode: str = "server"
    listen: str = "/ip4/127.0.0.1/tcp/0"
    # What the command runs under, e.g. `ip netns exec HOST` to run it on a testbed host.
    wrapper: tuple[str, ...] = ()
    peer_id: str = ""
    addrs: list[str] = field(default_factory=list)
    ready: dict[str, Any] = field(default_factory=dict)
    _process: Process | None = None
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _buffer: bytes = b""
    _lock: anyio.Lock = field(default_factory=anyio.Lock)

    async def __aenter__(self) -> ThirdPartyPeer:
        require(self.kind)
        cmd = [
            *self.wrapper,
            *command_line(self.kind),
            "--listen",
            self.listen,
            "--protocol",
            self.protocol,
            "--mode",
            self.mode,
        ]
        # The peer's own log goes to a file beside the installs, for reading after a failure.
        log_path = INTEROP / f"{self.kind}-peer-{os.getpid()}.log"
        with log_path.open("ab") as log:
            self._process = await anyio.open_process(cmd, stderr=log, start_new_session=True)
        with anyio.fail_after(60):
            self.ready = await self._read_line()
        if self.ready.get("event") != "ready":
            raise PeerCommandError(f"{self.kind} peer did not start: {self.ready}")
        self.peer_id = self.ready["peer_id"]
        self.addrs = list(self.ready["addrs"])
        return self

    async def __aexit__(self, *exc: object) -> None:
        process = self._process
        if process is None:
            return
        with anyio.CancelScope(shield=True):
            with anyio.move_on_after(5):
                try:
                    await self.command("stop", timeout=3)
                except Exception:
                    pass
                await process.wait()
            if process.returncode is None:
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                await process.wait()
            await process.aclose()

    async def _read_line(self) -> dict[str, Any]:
        assert self._process is not None and self._process.stdout is not None
        while b"\n" not in self._buffer:
            chunk = await self._process.stdout.receive()
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return dict(json.loads(line))

    async def command(self, name: str, *, timeout: float = 30, **args: Any) -> dict[str, Any]:  # noqa: ASYNC109
        assert self._process is not None and self._process.stdin is not None
        async with self._lock:
            request_id = next(self._ids)
            request = {"id": request_id, "cmd": name, "timeout_s": timeout, **args}
            await self._process.stdin.send((json.dumps(request) + "\n").encode())
            with anyio.fail_after(timeout + 10):
                while True:
                    answer = await self._read_line()
                    if answer.get("id") == request_id:
                        break
        if not answer.get("ok"):
            raise PeerCommandError(f"{self.kind} {name} failed: {answer.get('error')}")
        return answer


def start_peer(
    kind: Kind,
    *,
    protocol: str = "/icn/kad/1.0.0",
    mode: str = "server",
    listen: str = "/ip4/127.0.0.1/tcp/0",
    wrapper: tuple[str, ...] = (),
) -> ThirdPartyPeer:
    return ThirdPartyPeer(kind=kind, protocol=protocol, mode=mode, listen=listen, wrapper=wrapper)
