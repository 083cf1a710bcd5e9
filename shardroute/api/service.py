"""The gRPC servicer: validate, convert, call the node, map errors to status codes. Thin."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from typing import Any, TypeVar

import anyio
import grpc

from shardroute.addrs import parse_multiaddr
from shardroute.api.backend import NodeBackend
from shardroute.api.convert import BadRequest, key_bytes, provider, shard_to_cid, shards_to_cids
from shardroute.content import ContentId
from shardroute.errors import DialError, InvalidRecord, ShardrouteError, StoreError, StoreFull
from shardroute.kad.config import Mode
from shardroute.kad.messages import PeerInfo
from shardroute.kad.reports import LookupReport
from shardroute.obs.metrics import Metrics
from shardroute.pb.api.v1 import shardroute_pb2 as pb
from shardroute.pb.api.v1 import shardroute_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

DEFAULT_FIND_COUNT = 20
MAX_FIND_COUNT = 1000
MAX_LOCATE_SHARDS = 1024
MAX_VALUE_BYTES = 10 * 1024
# What a lookup that ran out of time with nothing found answers (the acceptance text's words).
QUERY_TIMEOUT = "DHT query timeout"
T = TypeVar("T")


class ShardRouteService(pb_grpc.ShardRouteServicer):
    def __init__(self, node: NodeBackend, metrics: Metrics, *, batch_limit: int) -> None:
        self.node = node
        self.metrics = metrics
        self.batch_limit = batch_limit

    async def _guard(
        self,
        method: str,
        context: grpc.aio.ServicerContext[Any, Any],
        call: Callable[[], Awaitable[T]],
    ) -> T:
        started = time.perf_counter()
        try:
            result = await call()
        except BadRequest as exc:
            await self._abort(method, started, context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except TimeoutError as exc:
            await self._abort(
                method,
                started,
                context,
                grpc.StatusCode.DEADLINE_EXCEEDED,
                str(exc) or "the deadline passed first",
            )
        except InvalidRecord as exc:
            await self._abort(
                method, started, context, grpc.StatusCode.INVALID_ARGUMENT, f"record refused: {exc}"
            )
        except DialError as exc:
            await self._abort(method, started, context, grpc.StatusCode.UNAVAILABLE, str(exc))
        except StoreFull as exc:
            # Nothing of the call was kept; it can be retried once space returns.
            await self._abort(
                method, started, context, grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc)
            )
        except ShardrouteError as exc:
            await self._abort(method, started, context, grpc.StatusCode.UNAVAILABLE, str(exc))
        self._done(method, grpc.StatusCode.OK, started)
        return result

    def _done(self, method: str, code: grpc.StatusCode, started: float) -> None:
        self.metrics.grpc_requests_total.labels(method, code.name).inc()
        self.metrics.grpc_request_duration_seconds.labels(method).observe(
            time.perf_counter() - started
        )

    async def _abort(
        self,
        method: str,
        started: float,
        context: grpc.aio.ServicerContext[Any, Any],
        code: grpc.StatusCode,
        message: str,
    ) -> None:
        self._done(method, code, started)
        await context.abort(code, message)

    def _deadline(self, context: grpc.aio.ServicerContext[Any, Any]) -> float:
        remaining = context.time_remaining()
        return float("inf") if remaining is None else max(0.0, remaining - 0.05)

    def _need_peers(self) -> None:
        if not self.node.peer_count():
            raise ShardrouteError("the node has no peers yet (bootstrap it or use Connect)")

    # ------------------------------------------------------------------ announce
    async def Announce(
        self, request: pb.AnnounceRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.AnnounceResponse:
        async def run() -> pb.AnnounceResponse:
            cids = shards_to_cids(request.shards, "shards", self.batch_limit)
            stored_on = 0
            if request.wait:
                self._need_peers()
                with anyio.fail_after(self._deadline(context)):
                    announced, stored_on = await self.node.announce_and_wait(cids)
            else:
                announced = await self.node.announce(cids)
            return pb.AnnounceResponse(
                announced=announced, stored_on=stored_on, cids=[str(c.to_v1()) for c in cids]
            )

        return await self._guard("Announce", context, run)

    async def Withdraw(
        self, request: pb.WithdrawRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.WithdrawResponse:
        async def run() -> pb.WithdrawResponse:
            cids = shards_to_cids(request.shards, "shards", self.batch_limit)
            return pb.WithdrawResponse(withdrawn=await self.node.withdraw(cids))

        return await self._guard("Withdraw", context, run)

    # ------------------------------------------------------------------ find
    def _count(self, count: int, field: str) -> int:
        if count == 0:
            return DEFAULT_FIND_COUNT
        if count > MAX_FIND_COUNT:
            raise BadRequest(f"{field}: {count} exceeds the maximum of {MAX_FIND_COUNT}")
        return count

    async def FindProviders(
        self, request: pb.FindProvidersRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.Provider]:
        started = time.perf_counter()
        try:
            cid = shard_to_cid(request.shard, "shard")
            count = self._count(request.count, "count")
        except BadRequest as exc:
            await self._abort(
                "FindProviders", started, context, grpc.StatusCode.INVALID_ARGUMENT, str(exc)
            )
            return
        sent = 0
        reports: list[LookupReport] = []
        try:
            with anyio.move_on_after(self._deadline(context)) as scope:
                found = self.node.find_providers(cid.dht_key, count, on_report=reports.append)
                async with aclosing(found):
                    async for info in found:
                        sent += 1
                        yield provider(info)
        except StoreError as exc:
            await self._abort(
                "FindProviders", started, context, grpc.StatusCode.UNAVAILABLE, str(exc)
            )
            return
        if sent == 0:
            if not self.node.peer_count():
                code, why = grpc.StatusCode.UNAVAILABLE, "no local record and no peers to ask"
            elif scope.cancelled_caught:
                code, why = (
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    "no provider found before the deadline",
                )
            elif any(r.timed_out for r in reports):
                code, why = grpc.StatusCode.DEADLINE_EXCEEDED, QUERY_TIMEOUT
            else:  # the lookup ended normally: nobody provides it
                code, why = grpc.StatusCode.OK, ""
            if code is not grpc.StatusCode.OK:
                await self._abort("FindProviders", started, context, code, why)
                return
        self._done("FindProviders", grpc.StatusCode.OK, started)

    async def Locate(
        self, request: pb.LocateRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.ShardProvider]:
        started = time.perf_counter()
        try:
            cids = shards_to_cids(request.shards, "shards", MAX_LOCATE_SHARDS)
            if not 1 <= request.need <= len(cids):
                raise BadRequest(
                    f"need: must be between 1 and the {len(cids)} shards given, got {request.need}"
                )
            per_shard = request.providers_per_shard or 3
            if per_shard > 100:
                raise BadRequest(f"providers_per_shard: {per_shard} exceeds 100")
        except BadRequest as exc:
            await self._abort(
                "Locate", started, context, grpc.StatusCode.INVALID_ARGUMENT, str(exc)
            )
            return
        send, receive = anyio.create_memory_object_stream[tuple[int, ContentId, PeerInfo]](64)
        covered: set[int] = set()

        async def search(index: int, cid: ContentId) -> None:
            try:
                async with aclosing(self.node.find_providers(cid.dht_key, per_shard)) as found:
                    async for info in found:
                        await send.send((index, cid, info))
            except StoreError as exc:  # this shard goes without; the others may still cover
                log.warning("locate: shard %d: %s", index, exc)

        async def run_all() -> None:
            async with send, anyio.create_task_group() as tg:
                for i, cid in enumerate(cids):
                    tg.start_soon(search, i, cid)

        with anyio.move_on_after(self._deadline(context)) as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(run_all)
                async with receive:
                    async for index, cid, info in receive:
                        covered.add(index)
                        yield pb.ShardProvider(
                            cid=str(cid.to_v1()), index=index, provider=provider(info)
                        )
                        if len(covered) >= request.need:
                            break
                tg.cancel_scope.cancel()
        if len(covered) < request.need:
            short = f"only {len(covered)} of the {request.need} needed shards have a provider"
            if scope.cancelled_caught:
                await self._abort(
                    "Locate",
                    started,
                    context,
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    f"{short} by the deadline",
                )
            else:
                await self._abort("Locate", started, context, grpc.StatusCode.NOT_FOUND, short)
            return
        self._done("Locate", grpc.StatusCode.OK, started)

    # ------------------------------------------------------------------ peers and values
    async def GetClosestPeers(
        self, request: pb.GetClosestPeersRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetClosestPeersResponse:
        async def run() -> pb.GetClosestPeersResponse:
            key = key_bytes(request.key)
            self._need_peers()
            with anyio.fail_after(self._deadline(context)):
                report = await self.node.closest_peers(key)
            if report.timed_out and not report.peers:
                raise TimeoutError(QUERY_TIMEOUT)
            return pb.GetClosestPeersResponse(
                peers=[provider(p) for p in report.peers],
                requests=report.requests,
                rounds=report.rounds,
            )

        return await self._guard("GetClosestPeers", context, run)

    async def PutValue(
        self, request: pb.PutValueRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.PutValueResponse:
        async def run() -> pb.PutValueResponse:
            if not request.key or len(request.value) > MAX_VALUE_BYTES:
                raise BadRequest("key: empty, or value over 10 KiB")
            with anyio.fail_after(self._deadline(context)):
                report = await self.node.put_value(request.key, request.value)
            return pb.PutValueResponse(stored_on=report.accepted)

        return await self._guard("PutValue", context, run)

    async def GetValue(
        self, request: pb.GetValueRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetValueResponse:
        async def run() -> pb.GetValueResponse:
            if not request.key:
                raise BadRequest("key: empty")
            with anyio.fail_after(self._deadline(context)):
                report = await self.node.search_value(request.key, quorum=request.quorum or None)
            if report.timed_out and report.value is None:
                raise TimeoutError(QUERY_TIMEOUT)
            value = report.value
            return pb.GetValueResponse(found=value is not None, value=value or b"")

        return await self._guard("GetValue", context, run)

    async def GetNodeInfo(
        self, request: pb.GetNodeInfoRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.NodeInfo:
        return await self._guard("GetNodeInfo", context, self._node_info)

    async def SetMode(
        self, request: pb.SetModeRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.NodeInfo:
        async def run() -> pb.NodeInfo:
            modes: dict[int, Mode] = {pb.MODE_SERVER: "server", pb.MODE_CLIENT: "client"}
            if request.mode not in modes:
                # proto3 enums are open: an unknown number arrives as that number
                got = (
                    "MODE_UNSPECIFIED"
                    if request.mode == pb.MODE_UNSPECIFIED
                    else f"unknown value {request.mode}"
                )
                raise BadRequest(f"mode: must be MODE_SERVER or MODE_CLIENT, got {got}")
            if modes[request.mode] != self.node.mode:
                self.node.set_mode(modes[request.mode])
                log.info("switched to %s mode through the API", modes[request.mode])
            return await self._node_info()

        return await self._guard("SetMode", context, run)

    async def _node_info(self) -> pb.NodeInfo:
        status = await self.node.status()
        return pb.NodeInfo(
            peer_id=str(status.peer_id),
            addrs=[str(a) for a in status.addrs],
            mode=pb.MODE_SERVER if status.mode == "server" else pb.MODE_CLIENT,
            protocol=status.protocol,
            routing_table_size=status.routing_table_size,
            stored_records=status.stored_records,
            announced_records=status.announced_records,
            agent_version=status.agent_version,
            connections=status.connections,
            published_shards=status.published_shards,
            publish_lookups=status.publish_lookups,
            republish_backlog=status.republish_backlog,
        )

    async def ListRoutingTable(
        self, request: pb.ListRoutingTableRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListRoutingTableResponse:
        async def run() -> pb.ListRoutingTableResponse:
            peers = [
                pb.RoutingPeer(
                    peer_id=str(entry.peer),
                    addrs=[str(a) for a in entry.addrs],
                    bucket=entry.bucket,
                    last_seen_seconds_ago=entry.last_seen_seconds_ago,
                )
                for entry in self.node.routing_entries()
            ]
            return pb.ListRoutingTableResponse(peers=peers)

        return await self._guard("ListRoutingTable", context, run)

    async def Connect(
        self, request: pb.ConnectRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ConnectResponse:
        async def run() -> pb.ConnectResponse:
            try:
                addr = parse_multiaddr(request.multiaddr)
            except ValueError as exc:
                raise BadRequest(f"multiaddr: {exc}") from None
            with anyio.fail_after(self._deadline(context)):
                peer, in_table = await self.node.connect(addr)
            return pb.ConnectResponse(peer_id=str(peer), dht_server=in_table)

        return await self._guard("Connect", context, run)
