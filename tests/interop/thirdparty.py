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
    """A command the peer answered with ok:false."""


class PeerDied(PeerCommandError):
    """The peer exited, closed its stdout, or did not answer in time; the message carries the
    tail of its log."""


LOG_TAIL = 3000  # characters of a peer's log quoted in a failure
_log_ids = itertools.count(1)


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
    log_path: Path | None = None
    # How long past a command's own timeout_s an answer may take before the peer counts as hung.
    grace: float = 10.0

    def log_tail(self, chars: int = LOG_TAIL) -> str:
        """The end of this peer's own log (its stderr)."""
        if self.log_path is None or not self.log_path.exists():
            return "(no log)"
        text = self.log_path.read_text(errors="replace")
        return text[-chars:] if text else "(empty log)"

    async def _died(self, what: str) -> PeerDied:
        process = self._process
        if process is not None:
            with anyio.move_on_after(1):  # a peer that closed stdout is usually exiting
                await process.wait()
        code = None if process is None else process.returncode
        state = "running" if code is None else f"exited with {code}"
        return PeerDied(
            f"{self.kind} peer {self.peer_id or '(not ready)'} {what} ({state}); "
            f"log {self.log_path}:\n{self.log_tail()}"
        )

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
        # Each peer's own log goes to its own file beside the installs; failures quote its tail.
        self.log_path = INTEROP / f"{self.kind}-peer-{os.getpid()}-{next(_log_ids)}.log"
        with self.log_path.open("wb") as log:
            self._process = await anyio.open_process(cmd, stderr=log, start_new_session=True)
        try:
            with anyio.fail_after(60):
                self.ready = await self._read_line()
        except (TimeoutError, anyio.EndOfStream, anyio.BrokenResourceError, ValueError) as exc:
            died = await self._died(f"did not start: {type(exc).__name__}")
            await self._kill()
            raise died from exc
        if self.ready.get("event") != "ready":
            died = await self._died(f"did not start: {self.ready}")
            await self._kill()
            raise died
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
            await self._kill()

    async def _kill(self) -> None:
        process = self._process
        if process is None:
            return
        with anyio.CancelScope(shield=True):
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

    async def send_raw(self, line: str, *, wait: float = 10) -> dict[str, Any]:
        """Send one stdin line as it is; the next line the peer writes, whatever its id."""
        assert self._process is not None and self._process.stdin is not None
        async with self._lock:
            try:
                await self._process.stdin.send((line + "\n").encode())
                with anyio.fail_after(wait):
                    return await self._read_line()
            except (TimeoutError, anyio.EndOfStream, anyio.BrokenResourceError) as exc:
                what = f"gave no answer to {line[:80]!r}: {type(exc).__name__}"
                raise await self._died(what) from exc

    async def request(self, name: str, *, timeout: float = 30, **args: Any) -> dict[str, Any]:  # noqa: ASYNC109
        """The peer's answer to one command, ok or not. Raises PeerDied (with the peer's log)
        when the peer exits or gives no answer within `timeout` plus `grace`."""
        assert self._process is not None and self._process.stdin is not None
        async with self._lock:
            request_id = next(self._ids)
            request = {"id": request_id, "cmd": name, "timeout_s": timeout, **args}
            try:
                await self._process.stdin.send((json.dumps(request) + "\n").encode())
                with anyio.fail_after(timeout + self.grace):
                    while True:
                        answer = await self._read_line()
                        if answer.get("id") == request_id:
                            return answer
            except (TimeoutError, anyio.EndOfStream, anyio.BrokenResourceError) as exc:
                raise await self._died(f"gave no answer to {name}: {type(exc).__name__}") from exc

    async def command(self, name: str, *, timeout: float = 30, **args: Any) -> dict[str, Any]:  # noqa: ASYNC109
        answer = await self.request(name, timeout=timeout, **args)
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
