"""Who may use the API: TLS (a server certificate, optionally client certificates) and/or a
bearer token read from a file, on the server and in the clients.

The token travels as `authorization: Bearer <token>` metadata; calls without it, or with
another, get UNAUTHENTICATED. Client certificates, when a client CA is set, are checked in the
TLS handshake (gRPC and the routing HTTP port alike): without one, or with one from another CA,
there is no connection to answer on. The health service is exempt (probes of orchestrators send no
metadata; it tells nothing but serving or not). A node refuses to put a plaintext,
unauthenticated API on an address other hosts can reach unless told `insecure_api`.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import secrets
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

from shardroute.errors import StartupError

log = logging.getLogger(__name__)

TOKEN_HEADER = "authorization"
UNAUTHENTICATED_PREFIXES = ("/grpc.health.v1.Health/",)


def read_token(path: str, setting: str) -> str:
    """The token in `path` (surrounding whitespace dropped); StartupError if unusable."""
    try:
        token = Path(path).read_text().strip()
    except OSError as exc:
        raise StartupError(f"{setting} {path}: cannot read it: {exc.strerror or exc}") from None
    if not token or any(c.isspace() for c in token) or not token.isprintable():
        raise StartupError(f"{setting} {path}: the token must be one word of printable characters")
    return token


def read_or_create_token(path: str, setting: str) -> str:
    """The server's token: read from `path`, or, when no file is there yet, a new random one
    written there (mode 0600) for the operator and the clients to read."""
    file = Path(path)
    if not file.exists():
        try:
            file.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # made meanwhile: read it
        except OSError as exc:
            raise StartupError(f"{setting} {path}: cannot create it: {exc.strerror}") from None
        else:
            with os.fdopen(fd, "w") as out:
                out.write(secrets.token_urlsafe(32) + "\n")
            log.info("made a new API token in %s (clients read it with --token-file)", path)
    return read_token(path, setting)


def _read_pem(path: str, setting: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise StartupError(f"{setting} {path}: cannot read it: {exc.strerror or exc}") from None
    if b"-----BEGIN" not in data:
        raise StartupError(f"{setting} {path}: not a PEM file")
    return data


def is_loopback_address(address: str) -> bool:
    """Whether HOST:PORT listens only where this host's own processes reach it."""
    host = address.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may resolve anywhere


@dataclass(frozen=True, slots=True, kw_only=True)
class ApiAccess:
    """The server's side: what a caller must show."""

    token: str | None = None
    tls_cert: bytes | None = None
    tls_key: bytes | None = None
    tls_client_ca: bytes | None = None  # set: callers need a certificate signed by it
    tls_files: tuple[str, str, str] = ("", "", "")  # cert, key, client CA: for ssl contexts

    @classmethod
    def from_files(
        cls,
        *,
        token_file: str = "",
        tls_cert: str = "",
        tls_key: str = "",
        tls_client_ca: str = "",
    ) -> ApiAccess:
        if bool(tls_cert) != bool(tls_key):
            raise StartupError("api_tls_cert and api_tls_key go together: give both or neither")
        if tls_client_ca and not tls_cert:
            raise StartupError("api_tls_client_ca needs api_tls_cert and api_tls_key")
        return cls(
            token=read_or_create_token(token_file, "api_token_file") if token_file else None,
            tls_cert=_read_pem(tls_cert, "api_tls_cert") if tls_cert else None,
            tls_key=_read_pem(tls_key, "api_tls_key") if tls_key else None,
            tls_client_ca=_read_pem(tls_client_ca, "api_tls_client_ca") if tls_client_ca else None,
            tls_files=(tls_cert, tls_key, tls_client_ca),
        )

    @property
    def protected(self) -> bool:
        return self.token is not None or self.tls_cert is not None

    def check_exposure(self, setting: str, address: str, *, insecure: bool) -> None:
        if address and not self.protected and not insecure and not is_loopback_address(address):
            raise StartupError(
                f"{setting} {address}: an API reachable from other hosts needs TLS "
                "(api_tls_cert, api_tls_key) or a token (api_token_file); give one, listen on "
                "127.0.0.1, or pass --insecure-api if the network in front of it is trusted"
            )

    def server_credentials(self) -> grpc.ServerCredentials | None:
        if self.tls_cert is None or self.tls_key is None:
            return None
        # With a client CA the certificate is required in the handshake: grpc's Python server
        # has no "request but do not require" (require_client_auth=False sends no certificate
        # request at all), so a per-call check could never see one. A caller without a
        # certificate signed by the CA is refused before any call, not with a status.
        return grpc.ssl_server_credentials(
            [(self.tls_key, self.tls_cert)],
            root_certificates=self.tls_client_ca,
            require_client_auth=self.tls_client_ca is not None,
        )

    def ssl_context(self) -> ssl.SSLContext | None:
        """The same TLS rule for HTTP servers (the routing API)."""
        cert, key, client_ca = self.tls_files
        if not cert:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(cert, key)
            if client_ca:
                context.load_verify_locations(client_ca)
                context.verify_mode = ssl.CERT_REQUIRED
        except (OSError, ssl.SSLError) as exc:
            raise StartupError(f"api_tls_cert {cert}: unusable for TLS: {exc}") from None
        return context

    def interceptors(self) -> list[grpc.aio.ServerInterceptor]:
        return [] if self.token is None else [TokenInterceptor(self.token)]


class TokenInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

    def _authorized(self, metadata: Any) -> bool:
        for key, value in metadata or ():
            if key == TOKEN_HEADER:
                given = value.encode() if isinstance(value, str) else bytes(value)
                return hmac.compare_digest(given, self._expected)
        return False

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        method: str = details.method
        if (
            handler is None
            or method.startswith(UNAUTHENTICATED_PREFIXES)
            or self._authorized(details.invocation_metadata)
        ):
            return handler
        return _denied(handler)


DENIED = "a valid API token is required (authorization: Bearer <token>)"


def _denied(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    async def deny(_request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, DENIED)

    async def deny_stream(_request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, DENIED)
        yield  # pragma: no cover - abort raises

    codec = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(deny, **codec)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(deny_stream, **codec)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(deny, **codec)
    return grpc.stream_stream_rpc_method_handler(deny_stream, **codec)


# -- the client's side ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientCredentials:
    """What a client shows: a token, and for TLS the CA to trust (and its own certificate)."""

    token: str | None = None
    tls_ca: bytes | None = None
    tls_cert: bytes | None = None
    tls_key: bytes | None = None
    server_name: str | None = None  # the name the server certificate must carry, if not the host

    @classmethod
    def from_files(
        cls,
        *,
        token_file: str = "",
        tls_ca: str = "",
        tls_cert: str = "",
        tls_key: str = "",
        server_name: str = "",
    ) -> ClientCredentials:
        return cls(
            token=read_token(token_file, "--token-file") if token_file else None,
            tls_ca=_read_pem(tls_ca, "--tls-ca") if tls_ca else None,
            tls_cert=_read_pem(tls_cert, "--tls-cert") if tls_cert else None,
            tls_key=_read_pem(tls_key, "--tls-key") if tls_key else None,
            server_name=server_name or None,
        )

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        return () if self.token is None else ((TOKEN_HEADER, f"Bearer {self.token}"),)

    def _options(self, options: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
        if self.server_name:
            options = [*options, ("grpc.ssl_target_name_override", self.server_name)]
        return options

    def _ssl(self) -> grpc.ChannelCredentials | None:
        if self.tls_ca is None:
            return None
        return grpc.ssl_channel_credentials(
            root_certificates=self.tls_ca, private_key=self.tls_key, certificate_chain=self.tls_cert
        )

    def channel(self, address: str, options: list[tuple[str, Any]]) -> grpc.Channel:
        ssl = self._ssl()
        opts = self._options(options)
        raw = (
            grpc.insecure_channel(address, options=opts)
            if ssl is None
            else grpc.secure_channel(address, ssl, options=opts)
        )
        if self.token is None:
            return raw
        return grpc.intercept_channel(raw, _SyncMetadata(self._metadata()))

    def aio_channel(self, address: str, options: list[tuple[str, Any]]) -> grpc.aio.Channel:
        ssl = self._ssl()
        opts = self._options(options)
        interceptors = [] if self.token is None else _aio_metadata(self._metadata())
        if ssl is None:
            return grpc.aio.insecure_channel(address, options=opts, interceptors=interceptors)
        return grpc.aio.secure_channel(address, ssl, options=opts, interceptors=interceptors)


def _with_metadata(details: Any, extra: tuple[tuple[str, str], ...]) -> Any:
    """`details` (a ClientCallDetails) with `extra` metadata added."""
    metadata = [*(details.metadata or ()), *extra]
    return (
        details._replace(metadata=metadata)
        if hasattr(details, "_replace")
        else _Details(details, metadata)
    )


class _Details(grpc.ClientCallDetails):  # type: ignore[misc]
    def __init__(self, base: Any, metadata: list[tuple[str, str]]) -> None:
        self.method = base.method
        self.timeout = base.timeout
        self.metadata = metadata
        self.credentials = base.credentials
        self.wait_for_ready = getattr(base, "wait_for_ready", None)
        self.compression = getattr(base, "compression", None)


class _SyncMetadata(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[misc]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[misc]
    grpc.StreamUnaryClientInterceptor,  # type: ignore[misc]
    grpc.StreamStreamClientInterceptor,  # type: ignore[misc]
):
    def __init__(self, extra: tuple[tuple[str, str], ...]) -> None:
        self._extra = extra

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(_with_metadata(details, self._extra), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(_with_metadata(details, self._extra), request)

    def intercept_stream_unary(
        self, continuation: Any, details: Any, requests: Iterator[Any]
    ) -> Any:
        return continuation(_with_metadata(details, self._extra), requests)

    def intercept_stream_stream(
        self, continuation: Any, details: Any, requests: Iterator[Any]
    ) -> Any:
        return continuation(_with_metadata(details, self._extra), requests)


def _aio_metadata(extra: tuple[tuple[str, str], ...]) -> list[grpc.aio.ClientInterceptor]:
    def details_with(details: Any) -> Any:
        return grpc.aio.ClientCallDetails(
            details.method,
            details.timeout,
            grpc.aio.Metadata(*(details.metadata or ()), *extra),
            details.credentials,
            details.wait_for_ready,
        )

    class UnaryUnary(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
        async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
            return await continuation(details_with(details), request)

    class UnaryStream(grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
        async def intercept_unary_stream(
            self, continuation: Any, details: Any, request: Any
        ) -> Any:
            return await continuation(details_with(details), request)

    return [UnaryUnary(), UnaryStream()]
