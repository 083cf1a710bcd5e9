"""The Delegated Routing V1 HTTP port of a real `shardroute serve` process: guarded by the same
token and TLS rule as the gRPC API, refused on an address other hosts can reach unless it is
protected or --insecure-api, and a client that opens a streamed answer and stops reading does
not hold the answer (or its lookup) past the query deadline. Everything on 127.0.0.1."""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import urllib.request
from pathlib import Path

import anyio
import h11
import pytest
from multiaddr import Multiaddr
from prometheus_client.parser import text_string_to_metric_families

from shardroute.addrs import parse_multiaddr
from shardroute.content import ContentId
from shardroute.errors import ConnectionClosed, StreamReset
from shardroute.identity.keys import Ed25519PrivateKey
from shardroute.kad.messages import KadMessage, MessageType, PeerInfo, encode_message
from shardroute.net.host import Host
from shardroute.protocol.varint import frame
from tests.support.http_client import get
from tests.support.nodes import address, loopback_app
from tests.support.serve import ENV, SHARDROUTE, ServeProcess, free_port, serve, wait_serving
from tests.support.settings import loopback
from tests.support.stalling import Silence
from tests.support.tls import make_pki

pytestmark = pytest.mark.anyio

SHARD = ContentId.from_shard_hash(bytes.fromhex("5e" * 32))
PROTOCOL = "/icn/kad/1.0.0"  # serve's default


def peer_id_of(node: ServeProcess) -> str:
    return node.addrs[0].rsplit("/p2p/", 1)[1]


def bearer(token: str) -> list[tuple[str, str]]:
    return [("Authorization", f"Bearer {token}")]


async def until_answering(port: int, seconds: float = 30, **kwargs: object) -> None:
    """Until the HTTP port takes connections (the node binds it before it answers gRPC)."""
    with anyio.fail_after(seconds):
        while True:
            try:
                await get(port, "/routing/v1/", **kwargs)  # type: ignore[arg-type]
                return
            except OSError:
                await anyio.sleep(0.2)  # a poll: the node is another process


# -- the same rule as gRPC ------------------------------------------------------------------


async def test_serve_guards_the_routing_http_port_with_the_api_token(tmp_path: Path) -> None:
    token = "s3cret-routing-token-0123456789"
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    port = free_port()
    with serve(
        tmp_path / "n", "--api-token-file", str(token_file), routing_http_port=port, wait=False
    ) as node:
        await until_answering(port)
        me = peer_id_of(node)
        for path in (f"/routing/v1/peers/{me}", f"/routing/v1/providers/{SHARD}"):
            for headers in ([], bearer("not-the-token"), [("Authorization", f"Basic {token}")]):
                refused = await get(port, path, headers)
                assert refused.status == 401, (path, headers, refused.status)
                assert refused.headers["www-authenticate"].startswith("Bearer")
        ok = await get(port, f"/routing/v1/peers/{me}", bearer(token))
        assert ok.status == 200, ok.body
        assert [p["ID"] for p in ok.json()["Peers"]] == [me]
        # gRPC takes the same token, and nothing without it
        with_token = node.cli("id", env={"SHARDROUTE_TOKEN_FILE": str(token_file)})
        assert with_token.returncode == 0, with_token.stderr
        assert node.cli("id").returncode == 1


async def test_serve_speaks_tls_on_the_routing_http_port_when_the_api_does(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    port = free_port()
    tls = ["--api-tls-cert", str(pki.server_cert), "--api-tls-key", str(pki.server_key)]
    trusting = ssl.create_default_context(cafile=str(pki.ca))
    with serve(tmp_path / "n", *tls, routing_http_port=port, wait=False) as node:
        await until_answering(port, tls=trusting)
        me = peer_id_of(node)
        ok = await get(port, f"/routing/v1/peers/{me}", tls=trusting)
        assert ok.status == 200 and [p["ID"] for p in ok.json()["Peers"]] == [me]
        # plain HTTP gets no answer, and a client that does not trust the CA none either
        with pytest.raises((h11.RemoteProtocolError, anyio.BrokenResourceError, AssertionError)):
            await get(port, f"/routing/v1/peers/{me}")
        with pytest.raises((ssl.SSLError, anyio.BrokenResourceError)):
            await get(port, f"/routing/v1/peers/{me}", tls=ssl.create_default_context())
        # the gRPC API speaks TLS with the same certificate
        assert node.cli("id", env={"SHARDROUTE_TLS_CA": str(pki.ca)}).returncode == 0


def exposed_serve(tmp_path: Path, name: str, http_port: int, *extra: str) -> list[str]:
    return [
        *SHARDROUTE,
        "serve",
        "--data-dir",
        str(tmp_path / name),
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
        "--grpc",
        f"127.0.0.1:{free_port()}",
        "--metrics",
        "",
        "--routing-http",
        f"0.0.0.0:{http_port}",
        *extra,
    ]


def run(command: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=60)


def start(command: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
        start_new_session=True,
    )


async def test_serve_refuses_an_exposed_routing_port_without_token_or_tls(tmp_path: Path) -> None:
    port = free_port("0.0.0.0")
    refused = run(exposed_serve(tmp_path, "open", port))
    assert refused.returncode == 1, refused.stderr
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert f"routing_http 0.0.0.0:{port}" in lines[0] and "--insecure-api" in lines[0]
    assert not (tmp_path / "open" / "identity.key").exists()  # nothing was started
    token = "t0ken-for-the-exposed-routing-port"
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    for name, extra, needs_token in (
        ("insecure", ["--insecure-api"], False),
        ("protected", ["--api-token-file", str(token_file)], True),
    ):
        proc = start(exposed_serve(tmp_path, name, port, *extra))
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if not line:
                proc.wait(timeout=15)
                assert proc.stderr is not None
                raise AssertionError(f"{name}: serve exited: {proc.stderr.read()}")
            assert line.startswith("/ip4/127.0.0.1/tcp/"), (name, line)
            me = line.strip().rsplit("/p2p/", 1)[1]
            await until_answering(port)
            path = f"/routing/v1/peers/{me}"
            plain = await get(port, path)
            assert plain.status == (401 if needs_token else 200), (name, plain.status)
            assert (await get(port, path, bearer(token))).status == 200
        finally:
            proc.terminate()
            proc.wait(timeout=15)


# -- a client that stops reading ------------------------------------------------------------


PROVIDERS = 100  # serve's max_providers_per_key
LABEL = "x" * 60
QUICK = {"SHARDROUTE_QUERY_TIMEOUT": "3", "SHARDROUTE_REQUEST_TIMEOUT": "3"}
ANSWERED = {"route": "providers", "status": "200"}
REQUESTS = "shardroute_routing_http_requests_total"
LAST_CHUNK = b"\r\n0\r\n\r\n"


def bulky_addrs(i: int) -> tuple[Multiaddr, ...]:
    """Ten long DNS addresses (public scope, so handed to everyone): ~2.5 KB per record."""
    return tuple(
        Multiaddr(f"/dns4/{LABEL}.{LABEL}.{LABEL}.p{i}a{j}.example/tcp/4001") for j in range(10)
    )


async def provide(target: str, shard: ContentId, addrs: list[tuple[Multiaddr, ...]]) -> None:
    """One provider of `shard` per entry of `addrs`, each a host of its own that dials the node
    at `target` and sends it one ADD_PROVIDER with those addresses."""
    node = parse_multiaddr(target)

    async def one(claimed: tuple[Multiaddr, ...]) -> None:
        async with Host(
            Ed25519PrivateKey.generate(), listen_addrs=[parse_multiaddr("/ip4/127.0.0.1/tcp/0")]
        ) as host:
            conn = await host.dial(node)
            stream = await host.new_stream(conn.remote_peer, [PROTOCOL])
            add = KadMessage(
                type=MessageType.ADD_PROVIDER,
                key=shard.dht_key,
                provider_peers=(PeerInfo(host.peer_id, claimed),),
            )
            await stream.send(frame(encode_message(add)))
            await stream.send_eof()
            with anyio.move_on_after(10):  # the node closes its side once it read the request
                while True:
                    try:
                        await stream.receive()
                    except (anyio.EndOfStream, StreamReset, ConnectionClosed):
                        break

    with anyio.fail_after(120):
        for start in range(0, len(addrs), 10):
            async with anyio.create_task_group() as tg:
                for claimed in addrs[start : start + 10]:
                    tg.start_soon(one, claimed)


async def wait_stored(node: ServeProcess, count: int) -> None:
    with anyio.fail_after(60):
        while True:
            status = await anyio.to_thread.run_sync(node.cli, "status")
            if json.loads(status.stdout)["stored_records"] >= count:
                return
            await anyio.sleep(0.2)  # a poll: the records are written in batches


def metric(port: int, name: str, labels: dict[str, str]) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                return float(sample.value)
    return 0.0


async def wait_counted(metrics_port: int) -> None:
    """Until the node has finished (and counted) the providers answer."""
    with anyio.fail_after(60):
        while not await anyio.to_thread.run_sync(metric, metrics_port, REQUESTS, ANSWERED):  # noqa: ASYNC110
            await anyio.sleep(0.2)  # a poll: the node is another process


def open_and_stop_reading(port: int, path: str) -> tuple[socket.socket, bytes]:
    """A client with the smallest buffers it can ask for: it sends the request, reads until
    the first NDJSON record has arrived, and then reads no more (the socket stays open)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 536)
    sock.settimeout(30)
    sock.connect(("127.0.0.1", port))
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: application/x-ndjson\r\n\r\n"
    sock.sendall(request.encode())
    got = b""
    while b'"Schema"' not in got:
        piece = sock.recv(1024)
        assert piece, f"the answer ended before its first record: {got!r}"
        got += piece
    assert got.startswith(b"HTTP/1.1 200 "), got[:200]
    return sock, got


def read_on(sock: socket.socket, *, until: bytes | None = None) -> tuple[bytes, bool]:
    """What comes next, to the end of the connection (or to `until`, if it comes first), and
    whether the server closed the connection."""
    sock.settimeout(60)
    rest = b""
    while until is None or not rest.endswith(until):
        try:
            piece = sock.recv(65536)
        except ConnectionResetError:
            return rest, True
        except TimeoutError:
            return rest, False
        if not piece:
            return rest, True
        rest += piece
    return rest, False


async def test_a_client_that_stops_reading_a_large_answer_is_cut_off_at_the_deadline(
    tmp_path: Path,
) -> None:
    http_port, metrics_port = free_port(), free_port()
    with serve(
        tmp_path / "n", routing_http_port=http_port, metrics_port=metrics_port, env=QUICK,
        wait=False,
    ) as node:  # fmt: skip
        await anyio.to_thread.run_sync(wait_serving, node.grpc_port)
        await provide(node.addrs[0], SHARD, [bulky_addrs(i) for i in range(PROVIDERS)])
        await wait_stored(node, PROVIDERS)
        assert metric(metrics_port, REQUESTS, ANSWERED) == 0
        # ~250 KB of NDJSON against a client that takes a few KB and stops: the node's
        # writes block well before the answer is out
        path = f"/routing/v1/providers/{SHARD}"
        sock, head = await anyio.to_thread.run_sync(open_and_stop_reading, http_port, path)
        try:
            # while that client sits on its answer, the node answers others
            me = peer_id_of(node)
            other = await get(http_port, f"/routing/v1/peers/{me}")
            assert other.status == 200 and other.json()["Peers"][0]["ID"] == me
            assert (await anyio.to_thread.run_sync(node.cli, "id")).returncode == 0
            # the answer is over at its deadline, unread as it is
            await wait_counted(metrics_port)
            rest, closed = await anyio.to_thread.run_sync(read_on, sock)
        finally:
            sock.close()
        body = head + rest
        # cut (no last chunk, fewer records than stored) and the connection closed
        assert closed, "the server kept the connection of a cut answer open"
        assert not body.endswith(LAST_CHUNK), "the answer was sent whole: buffers took it all"
        assert body.count(b'"Schema"') < PROVIDERS
        again = await get(http_port, f"/routing/v1/peers/{me}")
        assert again.status == 200


async def test_a_client_that_stops_reading_does_not_keep_the_lookup_past_the_deadline(
    tmp_path: Path,
) -> None:
    http_port, metrics_port = free_port(), free_port()
    silence = Silence(SHARD.dht_key)
    async with loopback_app(loopback()) as mute:
        with serve(
            tmp_path / "n", routing_http_port=http_port, metrics_port=metrics_port, env=QUICK,
            wait=False,
        ) as node:  # fmt: skip
            await anyio.to_thread.run_sync(wait_serving, node.grpc_port)
            joined = await anyio.to_thread.run_sync(node.cli, "connect", str(address(mute)))
            assert joined.returncode == 0 and json.loads(joined.stdout)["dht_server"], joined
            # from now on a provider lookup for SHARD waits on `mute` until it is dropped
            mute.host.set_stream_handler(mute.dht.config.protocol_id, silence.handler)
            await provide(node.addrs[0], SHARD, [bulky_addrs(0)])  # a first record to stream
            await wait_stored(node, 1)
            path = f"/routing/v1/providers/{SHARD}"
            sock, head = await anyio.to_thread.run_sync(open_and_stop_reading, http_port, path)
            try:
                with anyio.fail_after(30):
                    await silence.asked.wait()  # the lookup is out, waiting on `mute`
                me = peer_id_of(node)
                other = await get(http_port, f"/routing/v1/peers/{me}")
                assert other.status == 200 and other.json()["Peers"][0]["ID"] == me
                assert (await anyio.to_thread.run_sync(node.cli, "id")).returncode == 0
                # at the deadline the lookup is dropped and the answer ends, still unread
                await wait_counted(metrics_port)
                with anyio.fail_after(30):
                    await silence.released.wait()
                rest, closed = await anyio.to_thread.run_sync(
                    lambda: read_on(sock, until=LAST_CHUNK)
                )
            finally:
                sock.close()
            assert (head + rest).endswith(LAST_CHUNK), (closed, rest[-200:])
            assert (head + rest).count(b'"Schema"') == 1
