"""An in-process network of DHT nodes: the `KadTransport` twin for tests and the simulator.

A request is a direct call to the target's handler, with the sender's peer ID as the
authenticated sender; no sockets and, by default, no serialization, so thousands of nodes fit in
one process. What a real network would do is kept where it changes DHT behaviour:
- a first contact between two nodes is a "dial": it needs one of the target's addresses (so a
  DHT that loses addresses fails here as it would on TCP) and then "identify" runs both ways,
  which calls each side's `on_connected` hook in the network's task group;
- a node can be DOWN (dials refused at once) or UNRESPONSIVE (requests hang until they time out);
- a node without a handler does not speak the DHT protocol (client mode): requests fail;
- a handler that rejects a request resets the stream: `request` raises `KadRequestFailed`,
  `send` (which never reads) stops delivering the rest of its batch, silently;
- `codec=True` encodes and decodes every message, to catch codec bugs end to end;
- `checkpoints=n` adds n `anyio.sleep(0)` before delivery and before the reply, so concurrent
  requests interleave (latency without wall-clock time).
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import AsyncExitStack, contextmanager
from typing import Protocol

import anyio
import anyio.lowlevel
from anyio.abc import TaskGroup
from multiaddr import Multiaddr

from shardroute.errors import (
    KadRequestFailed,
    KadRequestRejected,
    LocalProtocolError,
    RemoteProtocolError,
)
from shardroute.identity.peer_id import PeerId
from shardroute.kad.messages import (
    KadMessage,
    MessageType,
    PeerInfo,
    decode_message,
    encode_message,
)
from shardroute.tasks import Service, enter_task_group


class NodeState(enum.Enum):
    UP = "up"
    DOWN = "down"  # dials are refused at once
    UNRESPONSIVE = "unresponsive"  # packets vanish: every request hangs until its timeout


class RequestHandler(Protocol):
    """The server side of the DHT protocol; `KadHandler` is one."""

    async def handle(self, sender: PeerId, request: KadMessage) -> KadMessage | None: ...


# (remote peer, its addresses, whether it serves the DHT protocol): what identify tells a node.
ConnectedHook = Callable[[PeerId, list[Multiaddr], bool], Awaitable[None]]


class MemoryEndpoint:
    """One node's `KadTransport` on a `MemoryNetwork`."""

    def __init__(self, network: MemoryNetwork, peer_id: PeerId, addrs: list[Multiaddr]) -> None:
        self._network = network
        self.self_id = peer_id
        self.addrs = list(addrs)
        self.handler: RequestHandler | None = None
        self.state = NodeState.UP
        self.on_connected: ConnectedHook | None = None
        self.checkpoints: int | None = None  # None: the network's default
        self._wake = anyio.Event()

    def self_addrs(self, to: PeerId | None = None) -> list[Multiaddr]:
        return list(self.addrs)

    # No connections and no scopes here: the DHT's own address book decides, every address
    # is usable by everyone, and diversity goes by what peers claim.
    def peer_addrs(self, peer: PeerId) -> Sequence[Multiaddr]:
        return []

    def shareable_to(self, peer: PeerId, addrs: Sequence[Multiaddr]) -> tuple[Multiaddr, ...]:
        return tuple(addrs)

    def acceptable_from(self, peer: PeerId, addrs: Sequence[Multiaddr]) -> tuple[Multiaddr, ...]:
        return tuple(addrs)

    def remote_addr(self, peer: PeerId) -> Multiaddr | None:
        return None

    @property
    def serving(self) -> bool:
        return self.handler is not None

    def serve(self, handler: RequestHandler) -> None:
        """Answer the DHT protocol (server mode)."""
        self.handler = handler

    def stop_serving(self) -> None:
        """Stop answering the DHT protocol (client mode): requests to us fail."""
        self.handler = None

    def info(self) -> PeerInfo:
        return PeerInfo(peer_id=self.self_id, addrs=tuple(self.addrs))

    async def request(self, peer: PeerInfo, message: KadMessage, *, timeout: float) -> KadMessage:  # noqa: ASYNC109
        return await self._network._request(self, peer, message, timeout)

    async def send(self, peer: PeerInfo, messages: Sequence[KadMessage], *, timeout: float) -> None:  # noqa: ASYNC109
        await self._network._send(self, peer, messages, timeout)


class MemoryNetwork(Service):
    """A registry of nodes in one process. Enter it (`async with`) before any hook can run."""

    def __init__(
        self, *, codec: bool = False, checkpoints: int = 0, require_addrs: bool = True
    ) -> None:
        if checkpoints < 0:
            raise ValueError("checkpoints must be >= 0")
        self.codec = codec
        self.checkpoints = checkpoints
        self.require_addrs = require_addrs
        self.delivered: Counter[MessageType] = Counter()  # messages that reached a handler
        self.dials = 0
        self.streams = 0  # send() batches that reached a handler (one stream each)
        self.in_flight = 0  # request()/send() calls not finished yet
        self._nodes: dict[PeerId, MemoryEndpoint] = {}
        self._connections: set[frozenset[PeerId]] = set()
        self._tg: TaskGroup | None = None
        self._pending = 0
        self._idle = anyio.Event()
        self._idle.set()
        self._next_port = 10000

    async def _enter(self, stack: AsyncExitStack) -> None:
        self._tg = await enter_task_group(stack)
        stack.callback(setattr, self, "_tg", None)

    # -- membership and faults ------------------------------------------------------------

    def add_node(self, peer_id: PeerId, addrs: Sequence[Multiaddr] | None = None) -> MemoryEndpoint:
        """Register a node; without `addrs` it gets a unique loopback TCP address."""
        if peer_id in self._nodes:
            raise LocalProtocolError(f"{peer_id} is already on this network")
        if addrs is None:
            addrs = [Multiaddr(f"/ip4/127.0.0.1/tcp/{self._next_port}")]
            self._next_port += 1
        endpoint = MemoryEndpoint(self, peer_id, list(addrs))
        self._nodes[peer_id] = endpoint
        return endpoint

    def endpoint(self, peer_id: PeerId) -> MemoryEndpoint:
        return self._nodes[peer_id]

    def peers(self) -> list[PeerId]:
        return list(self._nodes)

    def set_state(self, peer_id: PeerId, state: NodeState) -> None:
        node = self._nodes[peer_id]
        node.state = state
        if state is not NodeState.UP:
            # Its connections are gone; the next contact is a fresh dial (and identify).
            self._connections = {c for c in self._connections if peer_id not in c}
        # Wake requests hanging on it so they see the new state.
        node._wake.set()
        node._wake = anyio.Event()

    def connected(self, a: PeerId, b: PeerId) -> bool:
        return frozenset((a, b)) in self._connections

    async def settle(self) -> None:
        """Wait until no identify hook is running (hooks may start further ones)."""
        while self._pending:
            await self._idle.wait()

    # -- delivery ---------------------------------------------------------------------------

    async def _request(
        self,
        sender: MemoryEndpoint,
        peer: PeerInfo,
        message: KadMessage,
        timeout: float,  # noqa: ASYNC109
    ) -> KadMessage:
        with self._deadline(peer, timeout, "no answer"):
            target, handler = await self._reach_handler(sender, peer)
            request = self._transcode(message)
            self.delivered[request.type] += 1
            try:
                reply = await handler.handle(sender.self_id, request)
            except (KadRequestRejected, RemoteProtocolError) as exc:
                raise KadRequestFailed(f"{peer.peer_id} reset the stream: {exc}") from exc
            if reply is None:
                raise KadRequestFailed(f"{peer.peer_id} closed the stream without answering")
            reply = self._transcode(reply)
            await self._delay(target)
            return reply

    async def _send(
        self,
        sender: MemoryEndpoint,
        peer: PeerInfo,
        messages: Sequence[KadMessage],
        timeout: float,  # noqa: ASYNC109
    ) -> None:
        with self._deadline(peer, timeout, "send not done"):
            _, handler = await self._reach_handler(sender, peer)
            self.streams += 1
            for message in messages:
                request = self._transcode(message)
                self.delivered[request.type] += 1
                try:
                    await handler.handle(sender.self_id, request)
                except (KadRequestRejected, RemoteProtocolError):
                    # The server resets the stream; a writer that reads nothing never notices.
                    break

    @contextmanager
    def _deadline(self, peer: PeerInfo, timeout: float, what: str) -> Iterator[None]:
        """Count a delivery in flight and map its timeout to the transport's failure."""
        self.in_flight += 1
        try:
            with anyio.fail_after(timeout):
                yield
        except TimeoutError as exc:
            raise KadRequestFailed(f"{peer.peer_id}: {what} within {timeout} s") from exc
        finally:
            self.in_flight -= 1

    async def _reach_handler(
        self, sender: MemoryEndpoint, peer: PeerInfo
    ) -> tuple[MemoryEndpoint, RequestHandler]:
        target = await self._reach(sender, peer)
        if target.handler is None:
            raise KadRequestFailed(f"{peer.peer_id} does not speak the DHT protocol")
        return target, target.handler

    async def _reach(self, sender: MemoryEndpoint, peer: PeerInfo) -> MemoryEndpoint:
        """Dial if needed (and run identify), wait out an unresponsive target, add latency."""
        target = self._nodes.get(peer.peer_id)
        if target is None:
            raise KadRequestFailed(f"{peer.peer_id}: no such peer")
        if target is sender:
            raise KadRequestFailed("a node cannot dial itself")
        while target.state is NodeState.UNRESPONSIVE:
            await target._wake.wait()
        if target.state is NodeState.DOWN:
            raise KadRequestFailed(f"{peer.peer_id}: connection refused")
        pair = frozenset((sender.self_id, target.self_id))
        if pair not in self._connections:
            if self.require_addrs and not set(peer.addrs).intersection(target.addrs):
                raise KadRequestFailed(f"{peer.peer_id}: no dialable address among {peer.addrs}")
            self.dials += 1
            self._connections.add(pair)
            self._identify(sender, target)
            self._identify(target, sender)
        await self._delay(target)
        return target

    def _identify(self, learner: MemoryEndpoint, remote: MemoryEndpoint) -> None:
        hook = learner.on_connected
        if hook is None:
            return
        if self._tg is None:
            raise LocalProtocolError("enter the MemoryNetwork (async with) before nodes connect")
        self._pending += 1
        if self._pending == 1:
            self._idle = anyio.Event()
        addrs = list(remote.addrs)
        self._tg.start_soon(self._run_hook, hook, remote.self_id, addrs, remote.serving)

    async def _run_hook(
        self, hook: ConnectedHook, peer: PeerId, addrs: list[Multiaddr], serving: bool
    ) -> None:
        try:
            await hook(peer, addrs, serving)
        finally:
            self._pending -= 1
            if self._pending == 0:
                self._idle.set()

    async def _delay(self, target: MemoryEndpoint) -> None:
        n = self.checkpoints if target.checkpoints is None else target.checkpoints
        for _ in range(n):
            await anyio.lowlevel.checkpoint()

    def _transcode(self, message: KadMessage) -> KadMessage:
        # Codec errors propagate unmapped: in this mode they are bugs to see, not peer failures.
        return decode_message(encode_message(message)) if self.codec else message
