"""MemoryNetwork: the in-process KadNetwork twin must fail, time out and identify like a network."""

from __future__ import annotations

import random

import anyio
import anyio.lowlevel
import pytest
from multiaddr import Multiaddr

from shardroute.errors import KadRequestFailed, KadRequestRejected
from shardroute.identity.peer_id import PeerId
from shardroute.kad.memory_transport import MemoryNetwork, NodeState
from shardroute.kad.messages import KadMessage, MessageType, PeerInfo, ValueRecord
from tests.support.cluster import random_peer_id

pytestmark = pytest.mark.anyio


class Recorder:
    """A handler that records what reached it and echoes requests (None for ADD_PROVIDER)."""

    def __init__(self, *, reject: set[MessageType] | None = None) -> None:
        self.seen: list[tuple[PeerId, KadMessage]] = []
        self.reject = reject or set()

    async def handle(self, sender: PeerId, request: KadMessage) -> KadMessage | None:
        self.seen.append((sender, request))
        if request.type in self.reject:
            raise KadRequestRejected("refused")
        if request.type is MessageType.ADD_PROVIDER:
            return None
        return request


def _ids(n: int) -> list[PeerId]:
    rng = random.Random(7)
    return [random_peer_id(rng) for _ in range(n)]


async def test_request_reaches_handler_with_authenticated_sender() -> None:
    a, b = _ids(2)
    async with MemoryNetwork() as net:
        ea, eb = net.add_node(a), net.add_node(b)
        handler = Recorder()
        eb.serve(handler)
        msg = KadMessage(type=MessageType.FIND_NODE, key=b"target")
        reply = await ea.request(eb.info(), msg, timeout=1)
        assert reply == msg
        assert handler.seen == [(a, msg)]
        assert net.delivered[MessageType.FIND_NODE] == 1
        assert net.connected(a, b)


async def test_failures_map_to_kad_request_failed() -> None:
    a, b = _ids(2)
    async with MemoryNetwork() as net:
        ea, eb = net.add_node(a), net.add_node(b)
        msg = KadMessage(type=MessageType.FIND_NODE, key=b"x")
        # No handler: the peer does not speak the protocol (client mode).
        with pytest.raises(KadRequestFailed, match="does not speak"):
            await ea.request(eb.info(), msg, timeout=1)
        eb.serve(Recorder(reject={MessageType.FIND_NODE}))
        with pytest.raises(KadRequestFailed, match="reset"):
            await ea.request(eb.info(), msg, timeout=1)
        eb.serve(Recorder())
        with pytest.raises(KadRequestFailed, match="without answering"):
            add = KadMessage(type=MessageType.ADD_PROVIDER, key=b"k")
            await ea.request(eb.info(), add, timeout=1)
        net.set_state(b, NodeState.DOWN)
        with pytest.raises(KadRequestFailed, match="refused"):
            await ea.request(eb.info(), msg, timeout=1)
        assert not net.connected(a, b)
        with pytest.raises(KadRequestFailed, match="no such peer"):
            await ea.request(PeerInfo(peer_id=_ids(3)[2], addrs=()), msg, timeout=1)


async def test_first_contact_needs_an_address_later_ones_do_not() -> None:
    a, b = _ids(2)
    async with MemoryNetwork() as net:
        ea, eb = net.add_node(a), net.add_node(b)
        eb.serve(Recorder())
        msg = KadMessage(type=MessageType.PING)
        wrong = PeerInfo(peer_id=b, addrs=(Multiaddr("/ip4/10.9.9.9/tcp/1"),))
        with pytest.raises(KadRequestFailed, match="no dialable address"):
            await ea.request(wrong, msg, timeout=1)
        await ea.request(eb.info(), msg, timeout=1)
        # Connected now: a request without addresses rides the existing connection.
        await ea.request(PeerInfo(peer_id=b, addrs=()), msg, timeout=1)
        assert net.dials == 1


async def test_unresponsive_peer_times_out_and_wakes_on_recovery() -> None:
    a, b = _ids(2)
    async with MemoryNetwork() as net:
        ea, eb = net.add_node(a), net.add_node(b)
        eb.serve(Recorder())
        net.set_state(b, NodeState.UNRESPONSIVE)
        msg = KadMessage(type=MessageType.FIND_NODE, key=b"x")
        with pytest.raises(KadRequestFailed, match="no answer within"):
            await ea.request(eb.info(), msg, timeout=0.05)
        replies: list[KadMessage] = []

        async def ask() -> None:
            replies.append(await ea.request(eb.info(), msg, timeout=5))

        async with anyio.create_task_group() as tg:
            tg.start_soon(ask)
            await anyio.wait_all_tasks_blocked()
            assert replies == []
            net.set_state(b, NodeState.UP)
        assert replies == [msg]


async def test_identify_hooks_run_both_ways_with_server_flags() -> None:
    a, b = _ids(2)
    heard: list[tuple[PeerId, PeerId, bool]] = []
    async with MemoryNetwork() as net:
        ea, eb = net.add_node(a), net.add_node(b)
        eb.serve(Recorder())  # b is a server, a a client

        def hook_for(me: PeerId):  # type: ignore[no-untyped-def]
            async def hook(peer: PeerId, addrs: list[Multiaddr], serving: bool) -> None:
                assert addrs == net.endpoint(peer).self_addrs()
                await anyio.lowlevel.checkpoint()
                heard.append((me, peer, serving))

            return hook

        ea.on_connected = hook_for(a)
        eb.on_connected = hook_for(b)
        await ea.request(eb.info(), KadMessage(type=MessageType.PING), timeout=1)
        await ea.request(eb.info(), KadMessage(type=MessageType.PING), timeout=1)
        await net.settle()
        assert sorted(heard) == sorted([(a, b, True), (b, a, False)])


async def test_send_delivers_a_batch_in_order_and_a_reset_drops_the_rest_silently() -> None:
    a, b = _ids(2)
    async with MemoryNetwork() as net:
        ea, eb = net.add_node(a), net.add_node(b)
        handler = Recorder(reject={MessageType.GET_VALUE})
        eb.serve(handler)
        batch = [KadMessage(type=MessageType.ADD_PROVIDER, key=bytes([i])) for i in range(3)]
        await ea.send(eb.info(), batch, timeout=1)
        assert [m for _, m in handler.seen] == batch
        assert net.streams == 1
        handler.seen.clear()
        bad = KadMessage(type=MessageType.GET_VALUE, key=b"k")
        await ea.send(eb.info(), [batch[0], bad, batch[1]], timeout=1)
        assert [m for _, m in handler.seen] == [batch[0], bad]
        net.set_state(b, NodeState.DOWN)
        with pytest.raises(KadRequestFailed):
            await ea.send(eb.info(), batch, timeout=1)


async def test_codec_mode_round_trips_every_message() -> None:
    a, b = _ids(2)
    async with MemoryNetwork(codec=True) as net:
        ea, eb = net.add_node(a), net.add_node(b)
        handler = Recorder()
        eb.serve(handler)
        msg = KadMessage(
            type=MessageType.PUT_VALUE,
            key=b"/pk/x",
            record=ValueRecord(key=b"/pk/x", value=b"v"),
            closer_peers=(ea.info(),),
        )
        reply = await ea.request(eb.info(), msg, timeout=1)
        # What arrives went through encode/decode, and survived it unchanged.
        assert handler.seen[0][1] is not msg
        assert handler.seen[0][1].record == msg.record
        assert handler.seen[0][1].closer_peers[0].peer_id == a
        assert reply.record == msg.record


async def test_checkpoints_let_other_tasks_run() -> None:
    a, b = _ids(2)
    async with MemoryNetwork(checkpoints=4) as net:
        ea, eb = net.add_node(a), net.add_node(b)
        eb.serve(Recorder())
        ticks = 0
        done = False

        async def ticker() -> None:
            nonlocal ticks
            while not done:
                ticks += 1
                await anyio.lowlevel.checkpoint()

        async with anyio.create_task_group() as tg:
            tg.start_soon(ticker)
            await anyio.lowlevel.checkpoint()
            start = ticks
            await ea.request(eb.info(), KadMessage(type=MessageType.PING), timeout=1)
            done = True
        # Two waits of four checkpoints each (before delivery, before the reply).
        assert ticks - start >= 8
