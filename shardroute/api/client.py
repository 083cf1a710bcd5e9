"""A client for storage nodes: the shardroute gRPC API with typed results, asyncio or blocking.

    async with AsyncClient("127.0.0.1:7070") as client:
        await client.announce(["bafkrei..."])
        async for p in client.find_providers("bafkrei...", count=3): ...

    with Client("127.0.0.1:7070") as client:
        providers = client.find_providers(digest, count=3)

Shards are CIDs (any version and multibase) or raw 32-byte SHA-256 digests.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from shardroute.api.access import ClientCredentials
from shardroute.pb.api.v1 import shardroute_pb2 as pb
from shardroute.pb.api.v1 import shardroute_pb2_grpc as pb_grpc

ShardLike = str | bytes
DEFAULT_ADDRESS = "127.0.0.1:7070"
ChannelT = TypeVar("ChannelT", grpc.Channel, grpc.aio.Channel)


@dataclass(frozen=True, slots=True)
class Provider:
    peer_id: str
    addrs: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ShardProvider:
    cid: str
    index: int
    provider: Provider


@dataclass(frozen=True, slots=True)
class AnnounceResult:
    announced: int
    stored_on: int | None
    cids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class NodeInfo:
    peer_id: str
    addrs: tuple[str, ...]  # the multiaddrs it advertises
    mode: str  # "server" or "client" (the message's enum, as text)
    protocol: str  # the DHT protocol ID, e.g. /icn/kad/1.0.0
    routing_table_size: int  # peers in the routing table
    stored_records: int  # unexpired provider records held, ours included
    announced_records: int  # shards this node announces and republishes
    agent_version: str
    connections: int  # open libp2p connections
    published_shards: int  # since the node started
    publish_lookups: int
    republish_backlog: int  # announced shards due now


@dataclass(frozen=True, slots=True)
class RoutingPeer:
    peer_id: str
    addrs: tuple[str, ...]
    bucket: int
    last_seen_seconds_ago: float


def to_shard(shard: ShardLike) -> pb.Shard:
    if isinstance(shard, bytes):
        return pb.Shard(sha256=shard)
    return pb.Shard(cid=shard)


def _provider(p: pb.Provider) -> Provider:
    return Provider(p.peer_id, tuple(p.addrs))


def _mode_number(mode: str) -> pb.Mode:
    """The wire value of a mode name; anything else goes as MODE_UNSPECIFIED, which the node
    refuses with INVALID_ARGUMENT naming the field."""
    return {"server": pb.MODE_SERVER, "client": pb.MODE_CLIENT}.get(mode, pb.MODE_UNSPECIFIED)


def _info(m: pb.NodeInfo) -> NodeInfo:
    mode = {pb.MODE_SERVER: "server", pb.MODE_CLIENT: "client"}.get(m.mode, "unknown")
    return NodeInfo(
        m.peer_id,
        tuple(m.addrs),
        mode,
        m.protocol,
        m.routing_table_size,
        m.stored_records,
        m.announced_records,
        m.agent_version,
        m.connections,
        m.published_shards,
        m.publish_lookups,
        m.republish_backlog,
    )


class _Connection(Generic[ChannelT]):
    """What both clients hold: the node's address, the per-call timeout, and a stub over a
    channel that `_open` makes (blocking or asyncio)."""

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        *,
        timeout: float = 30.0,
        credentials: ClientCredentials | None = None,
    ) -> None:
        self.address = address
        self.timeout = timeout
        self._channel = self._open(credentials or ClientCredentials(), address)
        self._stub = pb_grpc.ShardRouteStub(self._channel)  # type: ignore[no-untyped-call]

    def _open(self, credentials: ClientCredentials, address: str) -> ChannelT:
        raise NotImplementedError


class AsyncClient(_Connection[grpc.aio.Channel]):
    def _open(self, credentials: ClientCredentials, address: str) -> grpc.aio.Channel:
        return credentials.aio_channel(address, [])

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def announce(self, shards: Iterable[ShardLike], *, wait: bool = False) -> AnnounceResult:
        request = pb.AnnounceRequest(shards=[to_shard(s) for s in shards], wait=wait)
        reply = await self._stub.Announce(request, timeout=self.timeout)
        return AnnounceResult(reply.announced, reply.stored_on if wait else None, tuple(reply.cids))

    async def withdraw(self, shards: Iterable[ShardLike]) -> int:
        reply = await self._stub.Withdraw(
            pb.WithdrawRequest(shards=[to_shard(s) for s in shards]), timeout=self.timeout
        )
        return int(reply.withdrawn)

    async def find_providers(
        self,
        shard: ShardLike,
        *,
        count: int = 20,
        timeout: float | None = None,  # noqa: ASYNC109 (the gRPC deadline)
    ) -> AsyncIterator[Provider]:
        call = self._stub.FindProviders(
            pb.FindProvidersRequest(shard=to_shard(shard), count=count),
            timeout=timeout or self.timeout,
        )
        async for p in call:
            yield _provider(p)

    async def locate(
        self,
        shards: Iterable[ShardLike],
        *,
        need: int,
        per_shard: int = 3,
        timeout: float | None = None,  # noqa: ASYNC109 (the gRPC deadline)
    ) -> AsyncIterator[ShardProvider]:
        request = pb.LocateRequest(
            shards=[to_shard(s) for s in shards], need=need, providers_per_shard=per_shard
        )
        async for item in self._stub.Locate(request, timeout=timeout or self.timeout):
            yield ShardProvider(item.cid, item.index, _provider(item.provider))

    async def closest_peers(self, key: str) -> list[Provider]:
        reply = await self._stub.GetClosestPeers(
            pb.GetClosestPeersRequest(key=key), timeout=self.timeout
        )
        return [_provider(p) for p in reply.peers]

    async def put_value(self, key: bytes, value: bytes) -> int:
        reply = await self._stub.PutValue(
            pb.PutValueRequest(key=key, value=value), timeout=self.timeout
        )
        return int(reply.stored_on)

    async def get_value(self, key: bytes, *, quorum: int | None = None) -> bytes | None:
        """The best value found; `quorum` answers to wait for (None: the node's setting)."""
        request = pb.GetValueRequest(key=key, quorum=quorum or 0)
        reply = await self._stub.GetValue(request, timeout=self.timeout)
        return reply.value if reply.found else None

    async def node_info(self) -> NodeInfo:
        return _info(await self._stub.GetNodeInfo(pb.GetNodeInfoRequest(), timeout=self.timeout))

    async def set_mode(self, mode: str) -> NodeInfo:
        """Switch the node to "server" or "client" DHT mode (until it restarts)."""
        request = pb.SetModeRequest(mode=_mode_number(mode))
        return _info(await self._stub.SetMode(request, timeout=self.timeout))

    async def routing_table(self) -> list[RoutingPeer]:
        reply = await self._stub.ListRoutingTable(
            pb.ListRoutingTableRequest(), timeout=self.timeout
        )
        return [
            RoutingPeer(p.peer_id, tuple(p.addrs), p.bucket, p.last_seen_seconds_ago)
            for p in reply.peers
        ]

    async def connect(self, multiaddr: str) -> tuple[str, bool]:
        reply = await self._stub.Connect(
            pb.ConnectRequest(multiaddr=multiaddr), timeout=self.timeout
        )
        return reply.peer_id, reply.dht_server


class Client(_Connection[grpc.Channel]):
    """The blocking twin of AsyncClient, for plain synchronous code."""

    def _open(self, credentials: ClientCredentials, address: str) -> grpc.Channel:
        return credentials.channel(address, [])

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def announce(self, shards: Iterable[ShardLike], *, wait: bool = False) -> AnnounceResult:
        reply = self._stub.Announce(
            pb.AnnounceRequest(shards=[to_shard(s) for s in shards], wait=wait),
            timeout=self.timeout,
        )
        return AnnounceResult(reply.announced, reply.stored_on if wait else None, tuple(reply.cids))

    def withdraw(self, shards: Iterable[ShardLike]) -> int:
        return int(
            self._stub.Withdraw(
                pb.WithdrawRequest(shards=[to_shard(s) for s in shards]), timeout=self.timeout
            ).withdrawn
        )

    def iter_providers(
        self, shard: ShardLike, *, count: int = 20, timeout: float | None = None
    ) -> Iterator[Provider]:
        """Providers as they arrive."""
        call = self._stub.FindProviders(
            pb.FindProvidersRequest(shard=to_shard(shard), count=count),
            timeout=timeout or self.timeout,
        )
        for p in call:
            yield _provider(p)

    def find_providers(
        self, shard: ShardLike, *, count: int = 20, timeout: float | None = None
    ) -> list[Provider]:
        call = self._stub.FindProviders(
            pb.FindProvidersRequest(shard=to_shard(shard), count=count),
            timeout=timeout or self.timeout,
        )
        return [_provider(p) for p in call]

    def locate(
        self,
        shards: Iterable[ShardLike],
        *,
        need: int,
        per_shard: int = 3,
        timeout: float | None = None,
    ) -> list[ShardProvider]:
        request = pb.LocateRequest(
            shards=[to_shard(s) for s in shards], need=need, providers_per_shard=per_shard
        )
        return [
            ShardProvider(i.cid, i.index, _provider(i.provider))
            for i in self._stub.Locate(request, timeout=timeout or self.timeout)
        ]

    def closest_peers(self, key: str) -> list[Provider]:
        return [
            _provider(p)
            for p in self._stub.GetClosestPeers(
                pb.GetClosestPeersRequest(key=key), timeout=self.timeout
            ).peers
        ]

    def health(self, service: str = "", *, timeout: float | None = None) -> str:
        """The grpc.health.v1 status of `service` ("": the node), e.g. SERVING or NOT_SERVING."""
        stub = health_pb2_grpc.HealthStub(self._channel)
        request = health_pb2.HealthCheckRequest(service=service)
        reply = stub.Check(request, timeout=timeout or self.timeout)
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))

    def wait_ready(self, timeout: float) -> bool:
        """Whether the node's gRPC port answers within `timeout` seconds."""
        try:
            grpc.channel_ready_future(self._channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            return False
        return True

    def put_value(self, key: bytes, value: bytes) -> int:
        reply = self._stub.PutValue(pb.PutValueRequest(key=key, value=value), timeout=self.timeout)
        return int(reply.stored_on)

    def get_value(self, key: bytes, *, quorum: int | None = None) -> bytes | None:
        request = pb.GetValueRequest(key=key, quorum=quorum or 0)
        reply = self._stub.GetValue(request, timeout=self.timeout)
        return reply.value if reply.found else None

    def node_info(self) -> NodeInfo:
        return _info(self._stub.GetNodeInfo(pb.GetNodeInfoRequest(), timeout=self.timeout))

    def set_mode(self, mode: str) -> NodeInfo:
        """Switch the node to "server" or "client" DHT mode (until it restarts)."""
        request = pb.SetModeRequest(mode=_mode_number(mode))
        return _info(self._stub.SetMode(request, timeout=self.timeout))

    def routing_table(self) -> list[RoutingPeer]:
        reply = self._stub.ListRoutingTable(pb.ListRoutingTableRequest(), timeout=self.timeout)
        return [
            RoutingPeer(p.peer_id, tuple(p.addrs), p.bucket, p.last_seen_seconds_ago)
            for p in reply.peers
        ]

    def connect(self, multiaddr: str) -> tuple[str, bool]:
        reply = self._stub.Connect(pb.ConnectRequest(multiaddr=multiaddr), timeout=self.timeout)
        return reply.peer_id, reply.dht_server
