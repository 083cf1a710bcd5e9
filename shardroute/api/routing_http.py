"""The Delegated Routing V1 HTTP server: h11 (sans-IO HTTP/1.1) over anyio sockets, answering
`GET /routing/v1/providers/{cid}` and `GET /routing/v1/peers/{peer-id}` from the node.

    server = RoutingHttpServer(app, "127.0.0.1:8190", metrics=m, query_timeout=10.0)
    await server.bind()          # StartupError if the port cannot be had; nothing runs yet
    async with server: ...       # accepting, until left

What to answer is decided in `routing_v1.py`; this module moves bytes and owns the time. Each
answer runs under the query timeout: at the deadline the lookup is closed and the answer ends
with what was found, whether or not the client kept reading. A client that hangs up mid-answer
(end of stream on its socket) cancels its lookup at once.

With `bearer_token`, every request but a CORS preflight needs `Authorization: Bearer <token>`
(else 401); with `ssl_context`, connections speak TLS.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import AsyncGenerator
from contextlib import AsyncExitStack, aclosing
from http import HTTPStatus

import anyio
import anyio.abc
import h11
from anyio.abc import SocketAttribute
from anyio.streams.tls import TLSStream

from shardroute.addrs import tcp_multiaddr
from shardroute.api.backend import NodeBackend
from shardroute.api.routing_v1 import (
    JSON_MAX_RECORDS,
    NDJSON_MAX_RECORDS,
    Format,
    Headers,
    PeerRecord,
    PeersQuery,
    Preflight,
    ProvidersQuery,
    Query,
    Refusal,
    Route,
    authorized,
    encode_body,
    encode_line,
    error_body,
    error_headers,
    http_date,
    parse_request,
    preflight_headers,
    result_headers,
    route_of,
)
from shardroute.clock import Clock, SystemClock
from shardroute.errors import ShardrouteError, StartupError
from shardroute.net.addresses import Scope, scope_of, shareable
from shardroute.net.transport import bind_failure
from shardroute.obs.metrics import Metrics
from shardroute.tasks import Service, enter_task_group

log = logging.getLogger(__name__)

# h11's own default (DEFAULT_MAX_INCOMPLETE_EVENT_SIZE): a request head over 16 KiB is refused.
MAX_HEAD_BYTES = 16 * 1024
RECEIVE_BYTES = 64 * 1024
# Our choices for a sidecar's API: a keep-alive connection idles at most this long between
# requests (Node's fetch keeps one 4 s, Go's 90 s), a TLS handshake and a final write get
# these budgets, and these many connections are served at once (more are told 429).
IDLE_TIMEOUT = 30.0
HANDSHAKE_TIMEOUT = 10.0
WRITE_TIMEOUT = 10.0
MAX_CONNECTIONS = 128
RETRY_AFTER_SECONDS = 1

_KNOWN = {s.value for s in HTTPStatus}
_CLOSED = (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError)


class _ClientGone(Exception):
    """The client closed its side or the socket broke; nothing more can be sent."""


class _Exchange:
    """One connection's h11 state and socket; sends are recorded so that an answer cut off
    mid-write is never continued."""

    def __init__(self, stream: anyio.abc.ByteStream, client_scope: Scope) -> None:
        self.stream = stream
        self.client_scope = client_scope
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        self.torn = False  # a write was interrupted: the byte stream is no longer HTTP
        self.bodiless = False  # the request is a HEAD: its answer carries no body

    async def send(self, event: h11.Event) -> None:
        data = self.conn.send(event)
        if not data:
            return
        self.torn = True
        try:
            await self.stream.send(data)
        except (*_CLOSED, anyio.BusyResourceError) as exc:
            raise _ClientGone from exc
        self.torn = False

    async def fill(self) -> bool:
        """Read once into h11; False at the end of the client's stream."""
        try:
            data = await self.stream.receive(RECEIVE_BYTES)
        except _CLOSED:
            data = b""
        self.conn.receive_data(data)
        return bool(data)


class RoutingHttpServer(Service):
    def __init__(
        self,
        backend: NodeBackend,
        address: str,
        *,
        metrics: Metrics,
        query_timeout: float,
        bearer_token: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        share_private: bool = False,
        max_connections: int = MAX_CONNECTIONS,
        clock: Clock | None = None,
    ) -> None:
        """`address` is HOST:PORT (port 0 picks one: see `port`). `query_timeout` bounds each
        answer. `share_private`: hand private addresses to clients on public addresses too."""
        if bearer_token is not None and not bearer_token.strip():
            raise ValueError("bearer_token must not be empty")
        self.backend = backend
        self.address = address
        self.metrics = metrics
        self.query_timeout = query_timeout
        self.bearer_token = bearer_token
        self.ssl_context = ssl_context
        self.share_private = share_private
        self.max_connections = max_connections
        self.clock = clock or SystemClock()
        self.port: int | None = None
        self._listener: anyio.abc.Listener[anyio.abc.SocketStream] | None = None
        self._active = 0

    async def bind(self) -> None:
        """Take the port now, so that a node refuses to start before anything runs."""
        host, _, port_text = self.address.rpartition(":")
        port = int(port_text)
        try:
            listener = await anyio.create_tcp_listener(
                local_host=host.strip("[]"), local_port=port, reuse_port=False
            )
        except OSError as exc:
            raise StartupError(
                f"routing_http {self.address}: cannot listen: {bind_failure(exc, port)}"
            ) from None
        subs = getattr(listener, "listeners", [listener])
        self.port = int(subs[0].extra(SocketAttribute.local_address)[1])
        self._listener = listener

    async def release(self) -> None:
        """Give back a port that `bind` took when the server will not be entered after all."""
        if self._listener is not None:
            listener, self._listener = self._listener, None
            await listener.aclose()

    async def _enter(self, stack: AsyncExitStack) -> None:
        if self._listener is None:
            await self.bind()
        listener = self._listener
        assert listener is not None
        self._listener = None
        stack.push_async_callback(listener.aclose)
        tg = await enter_task_group(stack)
        tg.start_soon(listener.serve, self._connection, tg)

    # -- connections ---------------------------------------------------------------------

    async def _connection(self, raw: anyio.abc.SocketStream) -> None:
        remote = raw.extra(SocketAttribute.remote_address)
        client_scope = scope_of(tcp_multiaddr(str(remote[0]), int(remote[1])))
        stream: anyio.abc.ByteStream = raw
        if self._active >= 2 * self.max_connections:
            await anyio.aclose_forcefully(raw)  # far over: not even a 429
            return
        self._active += 1
        try:
            if self.ssl_context is not None:
                try:
                    with anyio.fail_after(HANDSHAKE_TIMEOUT):
                        stream = await TLSStream.wrap(
                            raw,
                            server_side=True,
                            ssl_context=self.ssl_context,
                            standard_compatible=False,
                        )
                except (TimeoutError, ssl.SSLError, *_CLOSED) as exc:
                    log.info("routing HTTP: TLS handshake with %s failed: %r", remote[0], exc)
                    await anyio.aclose_forcefully(raw)
                    return
            exchange = _Exchange(stream, client_scope)
            try:
                await self._serve(exchange, over_limit=self._active > self.max_connections)
            except _ClientGone:
                pass
            finally:
                await anyio.aclose_forcefully(stream)
        finally:
            self._active -= 1

    async def _serve(self, ex: _Exchange, *, over_limit: bool) -> None:
        """Requests one after another on one connection (HTTP/1.1 keep-alive)."""
        while True:
            started = time.perf_counter()
            try:
                request = await self._next_request(ex)
            except h11.RemoteProtocolError as exc:
                if ex.conn.our_state is h11.SEND_RESPONSE:
                    status = exc.error_status_hint
                    await self._plain(ex, status, f"bad request: {exc}", close=True)
                    self._count(Route.OTHER, status, started)
                return
            if request is None:
                return
            route = route_of(_text(request.target))
            if over_limit:
                await self._plain(ex, 429, "too many connections; retry soon", close=True)
                self._count(route, 429, started)
                return
            status = await self._answer(ex, request)
            self._count(route, status, started)
            if ex.torn or ex.conn.our_state is not h11.DONE or ex.conn.their_state is not h11.DONE:
                return  # cut short, a body we did not read, or a close asked for
            ex.conn.start_next_cycle()

    async def _next_request(self, ex: _Exchange) -> h11.Request | None:
        """The next request head, with any body already here; None when the client is gone,
        idled out or closed."""
        with anyio.move_on_after(IDLE_TIMEOUT):
            while True:
                event = ex.conn.next_event()
                if event is h11.NEED_DATA:
                    await ex.fill()  # h11 turns an end of stream into ConnectionClosed
                elif isinstance(event, h11.Request):
                    # GETs have no body: its end is already here. A body still on its way is
                    # not read; the connection closes after the answer.
                    while ex.conn.their_state is h11.SEND_BODY:
                        if ex.conn.next_event() is h11.NEED_DATA:
                            break
                    return event
                else:
                    return None
        return None

    def _count(self, route: Route, status: int, started: float) -> None:
        self.metrics.routing_http_requests_total.labels(route.value, str(status)).inc()
        self.metrics.routing_http_request_duration_seconds.labels(route.value).observe(
            time.perf_counter() - started
        )

    # -- answers ---------------------------------------------------------------------------

    async def _answer(self, ex: _Exchange, request: h11.Request) -> int:
        """Answer one request; the status sent (499 when the client left before it)."""
        target = _text(request.target)
        ex.bodiless = request.method == b"HEAD"
        headers = _header_values(request)
        parsed = parse_request(_text(request.method), target, headers.get("accept", []))
        if isinstance(parsed, Preflight):
            await self._full(ex, 204, preflight_headers(), b"")
            return 204
        if not authorized(self.bearer_token, headers.get("authorization", [])):
            await self._plain(ex, 401, "missing or wrong Authorization: Bearer token")
            return 401
        if isinstance(parsed, Refusal):
            await self._plain(ex, parsed.status, parsed.message)
            return parsed.status
        return await self._lookup(ex, parsed)

    async def _lookup(self, ex: _Exchange, query: Query) -> int:
        """Answer one query, streamed or whole, under the query timeout."""
        cap = JSON_MAX_RECORDS if query.format is Format.JSON else NDJSON_MAX_RECORDS
        stream = query.format is Format.NDJSON
        key = "Providers" if isinstance(query, ProvidersQuery) else "Peers"
        collected: list[PeerRecord] = []
        headers_sent = gone = False
        failure: ShardrouteError | None = None
        with anyio.move_on_after(self.query_timeout):
            async with anyio.create_task_group() as tg:

                async def watch() -> None:
                    nonlocal gone
                    # Anything but a pipelined request arriving means the client hung up.
                    if not await ex.fill():
                        gone = True
                        tg.cancel_scope.cancel()

                tg.start_soon(watch)
                try:
                    async with aclosing(self._records(query, ex.client_scope)) as found:
                        async for record in found:
                            kept = query.filters.apply(record)
                            if kept is None:
                                continue
                            collected.append(kept)
                            if stream:
                                if not headers_sent:
                                    headers_sent = True
                                    await self._head(ex, 200, self._result(query, found=True))
                                await ex.send(h11.Data(data=encode_line(kept)))
                            if len(collected) >= cap:
                                break
                except _ClientGone:
                    gone = True
                except ShardrouteError as exc:  # the node failed: its store, mostly
                    failure = exc
                finally:
                    tg.cancel_scope.cancel()
        if gone or ex.torn:
            ex.torn = True
            return 200 if headers_sent else 499
        if failure is not None:
            log.warning("routing HTTP: %s lookup failed: %s", key.lower(), failure)
            if headers_sent:  # too late for a status: the stream just ends short
                ex.torn = True
                return 200
            await self._plain(ex, 500, f"routing failed: {failure}")
            return 500
        with anyio.move_on_after(WRITE_TIMEOUT) as writing:
            try:
                if stream:
                    if not headers_sent:
                        await self._head(ex, 200, self._result(query, found=False))
                    await ex.send(h11.EndOfMessage())
                else:
                    body = encode_body(key, collected)
                    await self._full(ex, 200, self._result(query, found=bool(collected)), body)
            except _ClientGone:
                ex.torn = True
        if writing.cancelled_caught:
            ex.torn = True
        return 200

    async def _records(self, query: Query, client: Scope) -> AsyncGenerator[PeerRecord, None]:
        """The node's answer as peer records, with the addresses this client can use."""
        backend = self.backend

        def record(peer: PeerRecord) -> PeerRecord:
            addrs = shareable(peer.addrs, client, share_private=self.share_private)
            return PeerRecord(peer=peer.peer, addrs=addrs, protocols=peer.protocols)

        if isinstance(query, PeersQuery):
            info = await backend.find_peer(query.peer)
            if info is not None:
                yield record(
                    PeerRecord.of(info.peer_id, info.addrs, backend.protocols_of(info.peer_id))
                )
            return
        cap = JSON_MAX_RECORDS if query.format is Format.JSON else NDJSON_MAX_RECORDS
        async with aclosing(backend.find_providers(query.cid.dht_key, cap)) as found:
            async for info in found:
                yield record(
                    PeerRecord.of(info.peer_id, info.addrs, backend.protocols_of(info.peer_id))
                )

    def _result(self, query: Query, *, found: bool) -> Headers:
        return result_headers(
            query.format,
            found=found,
            wall=self.clock.wall(),
            private=self.bearer_token is not None,
        )

    # -- writing ---------------------------------------------------------------------------

    async def _head(self, ex: _Exchange, status: int, headers: Headers) -> None:
        headers = [("Date", http_date(self.clock.wall())), *headers]
        reason = HTTPStatus(status).phrase.encode() if status in _KNOWN else b""
        await ex.send(h11.Response(status_code=status, headers=headers, reason=reason))

    async def _full(
        self, ex: _Exchange, status: int, headers: Headers, body: bytes, *, close: bool = False
    ) -> None:
        if status != 204:
            headers = [*headers, ("Content-Length", str(len(body)))]
        if close:
            headers = [*headers, ("Connection", "close")]
        await self._head(ex, status, headers)
        if body and not ex.bodiless:
            await ex.send(h11.Data(data=body))
        await ex.send(h11.EndOfMessage())

    async def _plain(
        self, ex: _Exchange, status: int, message: str, *, close: bool = False
    ) -> None:
        headers = error_headers(status)
        if status == 429:
            headers.append(("Retry-After", str(RETRY_AFTER_SECONDS)))
        with anyio.move_on_after(WRITE_TIMEOUT) as writing:
            await self._full(ex, status, headers, error_body(message), close=close)
        if writing.cancelled_caught:
            raise _ClientGone


def _text(value: bytes) -> str:
    return value.decode("latin-1")


def _header_values(request: h11.Request) -> dict[str, list[str]]:
    """Header values by lower-case name (h11 lower-cases names already)."""
    values: dict[str, list[str]] = {}
    for name, value in request.headers:
        values.setdefault(_text(name), []).append(_text(value))
    return values
