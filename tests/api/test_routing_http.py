"""The Delegated Routing V1 HTTP API of whole nodes in process, over real sockets on 127.0.0.1:
providers announced on one node found through another's endpoint, peers, every status, the
headers, NDJSON streaming, CORS, the bearer token, TLS, and clients that hang up."""

from __future__ import annotations

import dataclasses
import datetime as dt
import email.utils
import hashlib
import ipaddress
import os
import socket
import sqlite3
import ssl
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import h11
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from shardroute.api.routing_http import RoutingHttpServer
from shardroute.api.routing_v1 import ROUTE_NAMES
from shardroute.app import App
from shardroute.clock import FakeClock
from shardroute.config import ConfigError, Settings, load_settings
from shardroute.content import DAG_PB_CODEC, ContentId
from shardroute.errors import StartupError
from shardroute.identity.keys import Ed25519PrivateKey
from shardroute.obs.metrics import ROUTING_HTTP_ROUTES
from shardroute.store.database import SqliteStore
from shardroute.store.engine import DATABASE_FILE
from tests.support.http_client import connect, get
from tests.support.nodes import address, loopback_app
from tests.support.peers import keyed_peer_id
from tests.support.serve import ENV, SHARDROUTE
from tests.support.settings import loopback
from tests.support.stalling import Silence

pytestmark = pytest.mark.anyio

HTTP = loopback(routing_http="127.0.0.1:0")
NDJSON = ("Accept", "application/x-ndjson")
CORS = {"access-control-allow-origin": "*", "access-control-allow-methods": "GET, OPTIONS"}


def shard(i: int) -> ContentId:
    return ContentId.from_shard_hash(hashlib.sha256(f"http shard {i}".encode()).digest())


def port_of(app: App) -> int:
    assert app.routing_http_port is not None
    return app.routing_http_port


def addrs_of(app: App) -> list[str]:
    return [str(a).rsplit("/p2p/", 1)[0] for a in app.listen_multiaddrs()]


def max_age(headers: dict[str, str]) -> int:
    parts = dict(p.strip().partition("=")[::2] for p in headers["cache-control"].split(","))
    assert parts["stale-while-revalidate"] == parts["stale-if-error"] == "172800"
    return int(parts["max-age"])


def assert_result_headers(headers: dict[str, str], content_type: str) -> None:
    assert headers["content-type"] == content_type
    assert headers["vary"] == "Accept"
    assert headers["cache-control"].startswith("public, ")
    modified = email.utils.parsedate_to_datetime(headers["last-modified"])
    assert abs(modified.timestamp() - time.time()) < 60
    assert CORS.items() <= headers.items()


@dataclasses.dataclass
class Net:
    provider: App  # announced the shards
    relay: App  # holds the provider records
    asker: App  # joined after the announce; its HTTP endpoint is what the tests call


@asynccontextmanager
async def network(settings: Settings = HTTP) -> AsyncIterator[Net]:
    """provider — relay — asker: the asker's store holds none of the records, so its answers
    come from DHT lookups through the relay."""
    async with (
        loopback_app(loopback()) as provider,
        loopback_app(loopback()) as relay,
    ):
        await provider.connect(address(relay))
        count, stored_on = await provider.announce_and_wait([shard(1), shard(2)])
        assert (count, stored_on) == (2, 1)
        async with loopback_app(settings) as asker:
            _, in_table = await asker.connect(address(relay))
            assert in_table
            yield Net(provider, relay, asker)


# -- providers ------------------------------------------------------------------------------


async def test_providers_announced_on_one_node_are_found_through_anothers_endpoint() -> None:
    async with network() as net:
        port = port_of(net.asker)
        assert await net.asker.storage.providers.count(time.time()) == 0
        reply = await get(port, f"/routing/v1/providers/{shard(1)}")
        assert reply.status == 200
        assert_result_headers(reply.headers, "application/json")
        assert max_age(reply.headers) == 300
        assert int(reply.headers["content-length"]) == len(reply.body)
        (record,) = reply.json()["Providers"]
        assert record["Schema"] == "peer" and record["ID"] == str(net.provider.peer_id)
        assert record["Addrs"] == addrs_of(net.provider)

        # The same digest in other forms (CIDv0, dag-pb, base58btc v1) meets the same record.
        digest_only = ContentId(0, DAG_PB_CODEC, shard(1).multihash)
        other_codec = ContentId(1, DAG_PB_CODEC, shard(1).multihash)
        for form in (str(digest_only), str(other_codec), shard(1)._library().encode("base58btc")):
            text = form.decode() if isinstance(form, bytes) else form
            again = await get(port, f"/routing/v1/providers/{text}")
            assert [p["ID"] for p in again.json()["Providers"]] == [str(net.provider.peer_id)]

        nothing = await get(port, f"/routing/v1/providers/{shard(99)}")
        assert nothing.status == 200 and nothing.json() == {"Providers": []}
        assert_result_headers(nothing.headers, "application/json")
        assert max_age(nothing.headers) == 15


async def test_ndjson_streams_one_record_per_line_in_chunks() -> None:
    async with network() as net:
        port = port_of(net.asker)
        for accept in (
            "application/x-ndjson",
            "application/x-ndjson, application/json;q=0.8",  # what Helia's client sends
            "text/html, application/x-ndjson;q=0.5",
        ):
            reply = await get(port, f"/routing/v1/providers/{shard(2)}", [("Accept", accept)])
            assert reply.status == 200, accept
            assert_result_headers(reply.headers, "application/x-ndjson")
            assert reply.headers["transfer-encoding"] == "chunked"
            assert "content-length" not in reply.headers
            assert max_age(reply.headers) == 300
            assert reply.body.endswith(b"\n") and all(c.endswith(b"\n") for c in reply.chunks)
            (line,) = reply.lines()
            assert line["ID"] == str(net.provider.peer_id) and line["Schema"] == "peer"
            assert line["Addrs"] == addrs_of(net.provider)
        empty = await get(port, f"/routing/v1/providers/{shard(98)}", [NDJSON])
        assert empty.status == 200 and empty.body == b"" and max_age(empty.headers) == 15
        assert empty.headers["content-type"] == "application/x-ndjson"


async def test_an_accept_we_do_not_offer_gets_json() -> None:
    async with network() as net:
        for accept in ("text/html", "application/cbor", "*/*", "garbage;;;", ""):
            reply = await get(
                port_of(net.asker), f"/routing/v1/providers/{shard(1)}", [("Accept", accept)]
            )
            assert reply.status == 200 and reply.headers["content-type"] == "application/json"
            assert len(reply.json()["Providers"]) == 1


async def test_filters_drop_addresses_and_records_as_ipip_484_says() -> None:
    async with network() as net:
        port, provider = port_of(net.asker), str(net.provider.peer_id)

        async def ids(query: str) -> list[str]:
            reply = await get(port, f"/routing/v1/providers/{shard(1)}?{query}")
            assert reply.status == 200
            return [p["ID"] for p in reply.json()["Providers"]]

        assert await ids("filter-addrs=tcp") == [provider]
        assert await ids("filter-addrs=TCP%2C!ip6") == [provider]  # case, %2C
        assert await ids("filter-addrs=!ip4") == []  # its only addresses are IPv4
        assert await ids("filter-addrs=quic-v1,webtransport") == []
        assert await ids("filter-addrs=unknown") == []  # it has addresses
        assert await ids("filter-protocols=/ipfs/ping/1.0.0") == [provider]
        assert await ids("filter-protocols=transport-bitswap") == []
        too_many = ",".join(f"p{i}" for i in range(40))
        refused = await get(port, f"/routing/v1/providers/{shard(1)}?filter-addrs={too_many}")
        assert refused.status == 400 and b"filter-addrs" in refused.body


# -- peers ----------------------------------------------------------------------------------


async def test_peers_from_the_table_and_through_a_lookup_in_every_id_form() -> None:
    async with network() as net:
        port = port_of(net.asker)
        relay, provider = net.relay.peer_id, net.provider.peer_id
        assert relay in net.asker.dht.routing_table
        assert provider not in net.asker.dht.routing_table
        assert not net.asker.dht.addrs_of(provider)
        import cid as pycid

        for peer, app in ((relay, net.relay), (provider, net.provider)):
            base36 = pycid.make_cid(peer.to_cid()).encode("base36").decode()
            for text in (str(peer), peer.to_cid(), base36):
                reply = await get(port, f"/routing/v1/peers/{text}")
                assert reply.status == 200, text
                assert_result_headers(reply.headers, "application/json")
                assert max_age(reply.headers) == 300
                (record,) = reply.json()["Peers"]
                assert record["ID"] == str(peer) and record["Schema"] == "peer"
                assert record["Addrs"] == addrs_of(app)
        streamed = await get(port, f"/routing/v1/peers/{relay}", [NDJSON])
        (line,) = streamed.lines()
        assert line["ID"] == str(relay) and "/icn/kad/1.0.0" in line["Protocols"]
        assert streamed.headers["content-type"] == "application/x-ndjson"

        nobody = await get(port, f"/routing/v1/peers/{keyed_peer_id(7)}")
        assert nobody.status == 200 and nobody.json() == {"Peers": []}
        assert max_age(nobody.headers) == 15


# -- statuses -------------------------------------------------------------------------------

BAD = [
    ("/routing/v1/providers/not-a-cid", 400, "unable to parse CID"),
    ("/routing/v1/providers/bafy", 400, "unable to parse CID"),
    ("/routing/v1/providers/QmNotBase58Really0OIl", 400, "unable to parse CID"),
    (f"/routing/v1/providers/{'f01551220' + '00' * 32}ff", 400, "CID"),
    ("/routing/v1/peers/12D3KooWnope", 400, "identity peer ID of 7 bytes"),
    ("/routing/v1/peers/12D3KooW0OIl", 400, "unable to parse peer ID"),
    ("/routing/v1/peers/not-a-peer-id", 400, "unable to parse peer ID"),
    ("/routing/v1/peers/%00", 400, "unable to parse peer ID"),
    ("/routing/v1/providers/", 400, "unknown path"),
    ("/routing/v1/provider/bafy", 400, "unknown path"),
    ("/routing/v1/", 400, "unknown path"),
    ("/routing/v1/ipns/k51qzi5uqu5dlvj2baxnqndepeb86cbk3ng7n3i46uzyxzyqj2xjonzllnv0v8", 501, ""),
    (f"/routing/v1/dht/closest/peers/{shard(1)}", 501, "not implemented"),
    ("/routing/v2/providers/x", 404, "not found"),
    ("/", 404, "not found"),
]


async def test_every_refusal_has_its_status_a_message_and_cors() -> None:
    async with loopback_app(HTTP) as app:
        port = port_of(app)
        async with connect(port) as conn:  # all on one keep-alive connection
            for path, status, words in BAD:
                reply = await conn.request("GET", path)
                assert reply.status == status, path
                assert words.encode() in reply.body, (path, reply.body)
                assert reply.headers["content-type"].startswith("text/plain")
                assert CORS.items() <= reply.headers.items()
            for method, path in (
                ("PUT", "/routing/v1/providers"),
                ("POST", f"/routing/v1/providers/{shard(1)}"),
                ("DELETE", f"/routing/v1/peers/{app.peer_id}"),
                ("PUT", "/routing/v1/ipns/x"),
            ):
                reply = await conn.request(method, path)
                assert reply.status == 501 and b"not implemented" in reply.body, (method, path)
            head = await conn.request("HEAD", f"/routing/v1/providers/{shard(1)}")
            assert head.status == 501 and head.body == b""
        metrics = app.metrics.registry
        assert metrics.get_sample_value(
            "shardroute_routing_http_requests_total", {"route": "providers", "status": "400"}
        ) == sum(1 for p, s, _ in BAD if s == 400 and "/providers/" in p)
        assert (
            metrics.get_sample_value(
                "shardroute_routing_http_requests_total", {"route": "ipns", "status": "501"}
            )
            == 2
        )


async def test_preflight_answers_cors_on_any_path() -> None:
    async with loopback_app(HTTP) as app:
        for path in (f"/routing/v1/providers/{shard(1)}", "/routing/v1/peers/x", "/anything"):
            reply = await get(
                port_of(app),
                path,
                [
                    ("Origin", "https://example.org"),
                    ("Access-Control-Request-Method", "GET"),
                    ("Access-Control-Request-Headers", "accept, authorization"),
                ],
                method="OPTIONS",
            )
            assert reply.status == 204 and reply.body == b""
            assert CORS.items() <= reply.headers.items()
            allowed = {
                h.strip().lower() for h in reply.headers["access-control-allow-headers"].split(",")
            }
            assert {"accept", "authorization"} <= allowed
            assert int(reply.headers["access-control-max-age"]) > 0


async def test_a_broken_store_is_a_500_and_the_endpoint_keeps_serving(tmp_path: Path) -> None:
    settings = dataclasses.replace(HTTP, data_dir=str(tmp_path))
    clock = FakeClock()
    async with App(settings, identity=Ed25519PrivateKey.generate(), clock=clock) as app:
        assert isinstance(app.storage, SqliteStore)
        port = port_of(app)
        await app.joined.wait()
        await clock.wait_sleepers(3)  # the first expiry sweep and publish round are done
        assert (await get(port, f"/routing/v1/providers/{shard(1)}")).status == 200
        # Someone moves the providers table away under the running node, for a moment (the
        # node's other store users would fail too if it stayed away).
        with sqlite3.connect(tmp_path / DATABASE_FILE) as other:
            other.execute("ALTER TABLE provider_records RENAME TO hidden")
        try:
            for accept in ("application/json", "application/x-ndjson"):
                failed = await get(port, f"/routing/v1/providers/{shard(1)}", [("Accept", accept)])
                assert failed.status == 500 and b"routing failed" in failed.body
                assert CORS.items() <= failed.headers.items()
        finally:
            with sqlite3.connect(tmp_path / DATABASE_FILE) as other:
                other.execute("ALTER TABLE hidden RENAME TO provider_records")
        assert (await get(port, f"/routing/v1/providers/{shard(1)}")).status == 200


async def test_a_full_server_answers_429_and_recovers() -> None:
    async with loopback_app(loopback()) as app:
        server = RoutingHttpServer(
            app, "127.0.0.1:0", metrics=app.metrics, query_timeout=5, max_connections=1
        )
        async with server:
            assert server.port is not None
            async with connect(server.port) as first:
                busy = await get(server.port, f"/routing/v1/peers/{app.peer_id}")
                assert busy.status == 429 and busy.headers["retry-after"] == "1"
                assert busy.headers["connection"] == "close"
                ok = await first.request("GET", f"/routing/v1/peers/{app.peer_id}")
                assert ok.status == 200
            # A client that waits as Retry-After says is served once the first one left.
            await anyio.sleep(int(busy.headers["retry-after"]))
            assert (await get(server.port, f"/routing/v1/peers/{app.peer_id}")).status == 200


# -- token and TLS --------------------------------------------------------------------------


async def test_a_bearer_token_is_required_but_not_for_preflight() -> None:
    async with loopback_app(loopback()) as app:
        server = RoutingHttpServer(
            app, "127.0.0.1:0", metrics=app.metrics, query_timeout=5, bearer_token="s3cret"
        )
        async with server:
            assert server.port is not None
            path = f"/routing/v1/peers/{app.peer_id}"
            for headers in (
                [],
                [("Authorization", "Bearer wrong")],
                [("Authorization", "Basic czNjcmV0")],
                [("Authorization", "Bearer s3cret"), ("Authorization", "Bearer s3cret")],
            ):
                refused = await get(server.port, path, headers)
                assert refused.status == 401, headers
                assert refused.headers["www-authenticate"].startswith("Bearer")
                assert CORS.items() <= refused.headers.items()
                assert b"Bearer" in refused.body
            for scheme in ("Bearer", "bearer"):
                ok = await get(server.port, path, [("Authorization", f"{scheme} s3cret")])
                assert ok.status == 200 and ok.json()["Peers"][0]["ID"] == str(app.peer_id)
                # behind a token an answer must not sit in a shared cache
                assert ok.headers["cache-control"].startswith("private, ")
            preflight = await get(server.port, path, method="OPTIONS")
            assert preflight.status == 204


def self_signed(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context with a fresh certificate for 127.0.0.1, and a client that trusts it."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert_file, key_file)
    client = ssl.create_default_context(cafile=str(cert_file))
    return server, client


async def test_https_with_a_context_and_plain_http_is_refused_there(tmp_path: Path) -> None:
    server_tls, client_tls = self_signed(tmp_path)
    async with network() as net:
        server = RoutingHttpServer(
            net.asker,
            "127.0.0.1:0",
            metrics=net.asker.metrics,
            query_timeout=5,
            ssl_context=server_tls,
        )
        async with server:
            assert server.port is not None
            reply = await get(server.port, f"/routing/v1/providers/{shard(1)}", tls=client_tls)
            assert reply.status == 200
            assert [p["ID"] for p in reply.json()["Providers"]] == [str(net.provider.peer_id)]
            streamed = await get(
                server.port, f"/routing/v1/providers/{shard(1)}", [NDJSON], tls=client_tls
            )
            assert [p["ID"] for p in streamed.lines()] == [str(net.provider.peer_id)]
            with pytest.raises(
                (h11.RemoteProtocolError, anyio.BrokenResourceError, AssertionError)
            ):
                await get(server.port, f"/routing/v1/peers/{net.asker.peer_id}")
            untrusting = ssl.create_default_context()
            with pytest.raises((ssl.SSLError, anyio.BrokenResourceError)):
                await get(server.port, "/routing/v1/", tls=untrusting)
            again = await get(server.port, f"/routing/v1/peers/{net.asker.peer_id}", tls=client_tls)
            assert again.status == 200


# -- slow lookups, clients that leave -------------------------------------------------------


@asynccontextmanager
async def stalled(query_timeout: float) -> AsyncIterator[tuple[Net, Silence]]:
    """`network()` plus a silent peer in the asker's table: its provider lookups hang until
    the query timeout, well after the relay's answer."""
    settings = dataclasses.replace(HTTP, query_timeout=query_timeout, request_timeout=query_timeout)
    silence = Silence(shard(1).dht_key)
    async with network(settings) as net, loopback_app(loopback()) as mute:
        _, in_table = await net.asker.connect(address(mute))
        assert in_table
        mute.host.set_stream_handler(mute.dht.config.protocol_id, silence.handler)
        yield net, silence


async def test_records_stream_before_the_lookup_ends_and_the_deadline_ends_it() -> None:
    async with stalled(query_timeout=2.0) as (net, silence):
        port = port_of(net.asker)
        async with connect(port) as conn:
            started = time.monotonic()
            await conn.send_request("GET", f"/routing/v1/providers/{shard(1)}", [NDJSON])
            head = await conn.head()
            assert head.status == 200 and max_age(head.headers) == 300
            first = await conn.chunk()
            assert first is not None and str(net.provider.peer_id).encode() in first
            assert silence.asked.is_set() and not silence.released.is_set()
            assert time.monotonic() - started < 1.5  # streamed while the lookup still waits
            assert await conn.chunk() is None  # the answer ends, whole, at the deadline
            assert 1.5 < time.monotonic() - started < 4
            with anyio.fail_after(2):
                await silence.released.wait()
            # the connection is still good for the next request
            reply = await conn.request("GET", f"/routing/v1/peers/{net.relay.peer_id}")
            assert reply.status == 200


async def test_a_client_that_hangs_up_mid_stream_cancels_its_lookup() -> None:
    async with stalled(query_timeout=30.0) as (net, silence):
        port = port_of(net.asker)
        async with connect(port) as conn:
            await conn.send_request("GET", f"/routing/v1/providers/{shard(1)}", [NDJSON])
            assert (await conn.head()).status == 200
            assert await conn.chunk() is not None
            with anyio.fail_after(5):
                await silence.asked.wait()
        with anyio.fail_after(5):  # far before the 30 s the lookup would otherwise take
            await silence.released.wait()
        reply = await get(port, f"/routing/v1/peers/{net.relay.peer_id}")
        assert reply.status == 200
        counted = net.asker.metrics.registry.get_sample_value(
            "shardroute_routing_http_requests_total", {"route": "providers", "status": "200"}
        )
        assert counted == 1


# -- start-up -------------------------------------------------------------------------------


async def test_a_routing_port_in_use_is_refused_before_anything_starts(tmp_path: Path) -> None:
    async with loopback_app(HTTP) as running:
        held = f"127.0.0.1:{port_of(running)}"
        settings = dataclasses.replace(HTTP, routing_http=held, data_dir=str(tmp_path / "n"))
        with pytest.raises(StartupError, match=f"routing_http {held}: cannot listen: .*in use"):
            async with App(settings, identity=Ed25519PrivateKey.generate()):
                pass
        assert not (tmp_path / "n" / DATABASE_FILE).exists()  # the store was never opened


def test_metric_routes_are_the_servers_routes() -> None:
    assert tuple(ROUTING_HTTP_ROUTES) == ROUTE_NAMES


def test_serve_refuses_a_held_routing_port_in_one_line(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        held = f"127.0.0.1:{holder.getsockname()[1]}"
        command = [*SHARDROUTE, "serve", "--data-dir", str(tmp_path / "n")]
        command += ["--routing-http", held, "--grpc", "127.0.0.1:0", "--metrics", "127.0.0.1:0"]
        result = subprocess.run(
            [*command, "--listen", "/ip4/127.0.0.1/tcp/0"],
            capture_output=True,
            text=True,
            env=ENV,
            timeout=60,
        )
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("shardroute serve:")]
    assert f"routing_http {held}: cannot listen: the port is in use by pid {os.getpid()}" in line
    assert not (tmp_path / "n" / DATABASE_FILE).exists()


def test_the_routing_http_setting_is_host_port_or_empty() -> None:
    assert Settings().routing_http == "127.0.0.1:8190"
    env = {"SHARDROUTE_ROUTING_HTTP": "0.0.0.0:9000"}
    assert load_settings(env=env).routing_http == "0.0.0.0:9000"
    assert load_settings(overrides={"routing_http": ""}).routing_http == ""
    for bad in ("8190", "localhost", "host:port", "127.0.0.1:70000"):
        with pytest.raises(ConfigError, match=r"routing_http \(environment"):
            load_settings(env={"SHARDROUTE_ROUTING_HTTP": bad})
