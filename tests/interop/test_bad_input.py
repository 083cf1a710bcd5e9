"""Each peer program against bad control input, and the harness against a peer that dies or
hangs: an error line and the peer keeps serving; a dead or hung peer fails its test within a
bounded time, quoting the peer's own log."""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import time

import anyio
import pytest

from shardroute.addrs import with_p2p
from tests.interop.conftest import new_host
from tests.interop.thirdparty import KINDS, Kind, PeerDied, start_peer
from tests.support.nodes import address, loopback_app

pytestmark = pytest.mark.anyio

# Lines that are no command: none may go unanswered, crash the peer or stop it serving.
BAD_LINES = ["this is not json", "42", "null", "[1, 2]", '{"cmd": "dial"}']


@pytest.mark.parametrize("kind", KINDS)
async def test_unknown_commands_are_refused_and_the_peer_keeps_serving(kind: Kind) -> None:
    async with start_peer(kind) as peer, new_host() as host:
        answer = await peer.send_raw(json.dumps({"id": 7, "cmd": "frobnicate", "timeout_s": 5}))
        assert answer["id"] == 7 and answer["ok"] is False, answer
        assert "unknown command frobnicate" in answer["error"], answer
        answer = await peer.request("frobnicate", timeout=5)
        assert answer["ok"] is False and "unknown command" in answer["error"], answer
        answer = await peer.send_raw(json.dumps({"id": 8, "timeout_s": 5}))  # no cmd
        assert answer["id"] == 8 and answer["ok"] is False, answer
        assert "unknown command" in answer["error"], answer
        for line in BAD_LINES:
            answer = await peer.send_raw(line)
            assert answer["id"] is None and answer["ok"] is False, (line, answer)
            assert "unknown command" in answer["error"], (line, answer)
        # A command that is known but malformed is an error too, not a crash.
        answer = await peer.request("dial", addr="/not/a/multiaddr", timeout=5)
        assert answer["ok"] is False and answer["error"], answer

        # Still serving: it dials and pings a node and names it.
        ours = str(with_p2p(host.listen_addrs[0], host.peer_id))
        await peer.command("dial", addr=ours, timeout=15)
        answer = await peer.command("ping", peer_id=str(host.peer_id), count=1, timeout=15)
        assert len(answer["rtt_ms"]) == 1
        assert peer._process is not None and peer._process.returncode is None


@pytest.mark.parametrize("kind", KINDS)
async def test_a_peer_that_dies_fails_its_command_with_its_log(kind: Kind) -> None:
    async with start_peer(kind) as peer:
        assert peer._process is not None and peer.log_path is not None
        # Something of the peer's own in its log, to find in the failure.
        with peer.log_path.open("a") as log:
            log.write(f"marker before the crash of {peer.peer_id}\n")
        os.killpg(peer._process.pid, signal.SIGKILL)
        started = time.monotonic()
        with pytest.raises(PeerDied) as info:
            await peer.command("routing_table", timeout=5)
        assert time.monotonic() - started < 5
        message = str(info.value)
        assert f"marker before the crash of {peer.peer_id}" in message
        assert "exited with -9" in message and str(peer.log_path) in message


def thread_states(pid: int) -> set[str]:
    """The states (R, S, T, ...) of `pid`'s threads, as /proc shows them."""
    states = set()
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/stat") as stat:
                states.add(stat.read().rsplit(")", 1)[1].split()[0])
        except FileNotFoundError:
            continue  # a thread that ended
    return states


async def wait_until_stopped(pid: int) -> None:
    with anyio.fail_after(10):
        # a poll: the state is the kernel's
        while not (states := thread_states(pid)) or not states <= {"T", "t"}:  # noqa: ASYNC110
            await anyio.sleep(0.01)


@pytest.mark.parametrize("kind", KINDS)
async def test_a_hung_peer_fails_its_command_within_the_bound(kind: Kind) -> None:
    peer = start_peer(kind)
    peer.grace = 1.0
    async with peer:
        assert peer._process is not None
        os.killpg(peer._process.pid, signal.SIGSTOP)
        try:
            # A stop is delivered thread by thread; a loaded machine once let go answer first.
            await wait_until_stopped(peer._process.pid)
            started = time.monotonic()
            with pytest.raises(PeerDied) as info:
                await peer.command("routing_table", timeout=1)
            # timeout_s + grace, plus the second PeerDied waits for an exit; generous for a
            # loaded machine, far below "waits for ever"
            assert time.monotonic() - started < 10
            assert "gave no answer to routing_table" in str(info.value)
            assert "running" in str(info.value)
        finally:
            os.killpg(peer._process.pid, signal.SIGCONT)


async def test_inbound_connections_reset_at_once_do_not_stop_the_node() -> None:
    """Seen in the mixed network: a dialer that gives up at once (go and js cancel racing dials)
    resets its TCP connection before shardroute reads the peer address of it."""
    async with loopback_app() as node, start_peer("rust") as rust:
        port = int(str(node.host.listen_addrs[0]).split("/")[4])
        for _ in range(100):
            with socket.socket() as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                s.connect(("127.0.0.1", port))
        await anyio.sleep(0.5)
        # still serving: a real peer connects and uses the DHT
        await rust.command("dial", addr=str(address(node)))
        answer = await rust.command("closest_peers", key_b64="AAAA", timeout=10)
        assert str(node.peer_id) in answer["peers"], answer
