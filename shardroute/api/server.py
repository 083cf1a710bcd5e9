"""The gRPC server: the ShardRoute service, the standard health service, and reflection in
both its versions (v1, which current grpcurl and grpcui ask first, and v1alpha).

Health says NOT_SERVING until the node has joined the network when it has bootstrap peers to
join through (a load balancer should not send it finds yet), SERVING once it has, or at once
when it has none.
"""

from __future__ import annotations

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

from shardroute.api.access import ApiAccess
from shardroute.api.service import ShardRouteService
from shardroute.errors import StartupError
from shardroute.net.transport import check_bindable
from shardroute.pb.api.v1 import shardroute_pb2, shardroute_pb2_grpc

SERVICE_NAME = shardroute_pb2.DESCRIPTOR.services_by_name["ShardRoute"].full_name
REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"
# Biggest request accepted: an announce batch of 10,000 CIDs is about 600 KB.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024


class ApiServer:
    def __init__(
        self, service: ShardRouteService, address: str, access: ApiAccess | None = None
    ) -> None:
        access = access or ApiAccess()
        self.server = grpc.aio.server(
            interceptors=access.interceptors(),
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                # gRPC sets SO_REUSEPORT by default: a second node on the same port would then
                # share it silently and answer half the calls.
                ("grpc.so_reuseport", 0),
            ],
        )
        shardroute_pb2_grpc.add_ShardRouteServicer_to_server(service, self.server)  # type: ignore[no-untyped-call]
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        names = [
            SERVICE_NAME,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
            REFLECTION_V1,
        ]
        reflector = reflection.aio.ReflectionServicer(names)
        reflection_pb2_grpc.add_ServerReflectionServicer_to_server(reflector, self.server)
        # v1 has v1alpha's messages under a new package name: the same servicer answers both.
        self.server.add_generic_rpc_handlers(
            [
                grpc.method_handlers_generic_handler(
                    REFLECTION_V1,
                    {
                        "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
                            reflector.ServerReflectionInfo,
                            request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
                            response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
                        )
                    },
                )
            ]
        )
        check_bindable("grpc_listen", address)
        credentials = access.server_credentials()
        try:
            if credentials is None:
                self.port = self.server.add_insecure_port(address)
            else:
                self.port = self.server.add_secure_port(address, credentials)
        except RuntimeError:
            self.port = 0
        if self.port == 0:
            raise StartupError(f"grpc_listen {address}: cannot listen there")

    async def start(self, *, serving: bool = True) -> None:
        await self.server.start()
        await self.set_serving(serving)

    async def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", SERVICE_NAME):
            await self.health.set(name, status)

    async def stop(self, grace: float = 5.0) -> None:
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
