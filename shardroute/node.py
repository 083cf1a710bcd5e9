"""The DHT on a libp2p host: the wiring between the two, built by `app.App`.

- the mode decides whether the host serves the DHT protocol (the handler is installed or
  removed, and identify push tells connected peers);
- identify results (the host's `PeerIdentified` events) are offered to the routing table;
- routing-table peers are the host's protected peers (connection reserve, never trimmed);
- dialing a peer by hand or from the saved table waits for identify, so the table has decided
  on the peer by the time the call returns.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import anyio
import anyio.abc
from multiaddr import Multiaddr

from shardroute.errors import ShardrouteError
from shardroute.identity.peer_id import PeerId
from shardroute.kad.dht import Dht, Mode
from shardroute.kad.streams import ServerMetrics, make_server_handler
from shardroute.net.host import Host
from shardroute.net.identify import PeerIdentified
from shardroute.net.peerstore import RECENTLY_CONNECTED_ADDR_TTL

log = logging.getLogger(__name__)

# How long a dial waits for the peer's identify before reporting (go waits as long).
IDENTIFY_WAIT = 10.0


class Node:
    def __init__(self, host: Host, dht: Dht, *, metrics: ServerMetrics | None = None) -> None:
        self.host = host
        self.dht = dht
        self.protocol = dht.config.protocol_id
        self._server_handler = make_server_handler(dht.handler, metrics=metrics)
        # Subscribed now, before any connection exists, so no identify result is missed.
        self._identified = host.subscribe_identified()
        # Routing-table peers keep the connection reserve and are never trimmed as idle.
        host.resources.protected = dht.routing_table.__contains__

    @property
    def peer_id(self) -> PeerId:
        return self.host.peer_id

    @property
    def mode(self) -> Mode:
        return self.dht.mode

    def set_mode(self, mode: Mode) -> None:
        """Server mode answers and advertises the DHT protocol; client mode does neither."""
        self.dht.set_mode(mode)
        if mode == "server":
            self.host.set_stream_handler(self.protocol, self._server_handler)
        else:
            self.host.remove_stream_handler(self.protocol)

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Install the handler for the configured mode, then offer every identified peer to the
        routing table, until cancelled."""
        self.set_mode(self.dht.mode)
        async with anyio.create_task_group() as tg, self._identified:
            task_status.started()
            async for event in self._identified:
                # Admission may probe a full bucket's oldest peer: never hold up the stream.
                tg.start_soon(self._offer, event)

    async def _offer(self, event: PeerIdentified) -> None:
        try:
            await self.dht.peer_seen(
                event.peer,
                event.listen_addrs,
                is_server=self.protocol in event.protocols,
                remote_addr=event.remote_addr,
            )
        except ShardrouteError as exc:
            log.debug("routing table update for %s failed: %s", event.peer, exc)

    async def _admit_now(self, peer: PeerId) -> None:
        """Run the table's decision on an identified peer now, not when its event comes."""
        protocols = self.host.peerstore.protocols(peer)
        addrs = self.host.peer_addrs(peer)
        await self.dht.peer_seen(
            peer,
            addrs,
            is_server=self.protocol in protocols,
            remote_addr=self.host.remote_addr(peer),
        )

    async def connect(self, addr: Multiaddr) -> PeerId:
        """Dial a peer (as an operator joining by hand would) and wait for identify."""
        conn = await self.host.dial(addr)
        with anyio.move_on_after(IDENTIFY_WAIT):
            await self.host.wait_identified(conn.remote_peer)
        await self._admit_now(conn.remote_peer)
        return conn.remote_peer

    async def connect_peer(self, peer: PeerId, addrs: Sequence[Multiaddr]) -> None:
        """Dial a peer at any of `addrs` (a saved table entry) and wait for identify."""
        self.host.peerstore.add_addrs(
            peer, addrs, RECENTLY_CONNECTED_ADDR_TTL, self.host.clock.monotonic()
        )
        conn = await self.host.connect(peer)
        with anyio.move_on_after(IDENTIFY_WAIT):
            await self.host.wait_identified(conn.remote_peer)
