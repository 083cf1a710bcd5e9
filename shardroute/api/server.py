"""The gRPC server: the ShardRoute service, the standard health service and reflection."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from shardroute.api.service import ShardRouteService
from shardroute.pb.api.v1 import shardroute_pb2, shardroute_pb2_grpc

SERVICE_NAME = shardroute_pb2.DESCRIPTOR.services_by_name["ShardRoute"].full_name
# Biggest request accepted: an announce batch of 10,000 CIDs is about 600 KB.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024


class ApiServer:
    def __init__(self, service: ShardRouteService, address: str) -> None:
        self.server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ]
        )
        shardroute_pb2_grpc.add_ShardRouteServicer_to_server(service, self.server)  # type: ignore[no-untyped-call]
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            [
                SERVICE_NAME,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ],
            self.server,
        )
        self.port = self.server.add_insecure_port(address)
        if self.port == 0:
            raise OSError(f"cannot listen for gRPC on {address}")

    async def start(self) -> None:
        await self.server.start()
        for name in ("", SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    async def stop(self, grace: float = 5.0) -> None:
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
