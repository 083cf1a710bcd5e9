"""Who may call the API, against real `serve` processes: a token, TLS, client certificates;
the right credentials work, wrong or missing ones get UNAUTHENTICATED (or no connection), the
health service answers probes without a token, and an API other hosts could reach does not
start without protection unless --insecure-api.

Client certificates are checked in the TLS handshake, not per call: grpc's Python server can
only require a certificate or not ask for one (`require_client_auth=False` means the server
sends no certificate request at all, so no call could ever carry one to check). A caller
without a certificate, or with one from another CA, is therefore refused before any HTTP/2
byte is exchanged, which no RPC status can report; its client sees UNAVAILABLE.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from shardroute.api.access import ClientCredentials
from shardroute.pb.api.v1 import shardroute_pb2, shardroute_pb2_grpc
from tests.support.serve import SHARDROUTE, cli, free_port, serve
from tests.support.tls import TestPki, make_pki

# The client's first bytes of HTTP/2 (RFC 9113 3.4): the preface, then an empty SETTINGS frame.
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
H2_SETTINGS = 4


def wait_answering(port: int, env: Mapping[str, str], seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if cli(port, "id", env=env).returncode == 0:
            return
        time.sleep(0.2)
    raise AssertionError(f"gRPC on {port} never answered with {dict(env)}")


def error_of(result: subprocess.CompletedProcess[str]) -> str:
    return str(json.loads(result.stderr.strip().splitlines()[-1])["error"])


def node_info(
    port: int, credentials: ClientCredentials, metadata: tuple[tuple[str, str], ...] = ()
) -> shardroute_pb2.NodeInfo:
    """GetNodeInfo through the clients' own channel code; raises grpc.RpcError if refused."""
    with credentials.channel(f"127.0.0.1:{port}", []) as channel:
        stub = shardroute_pb2_grpc.ShardRouteStub(channel)  # type: ignore[no-untyped-call]
        reply: shardroute_pb2.NodeInfo = stub.GetNodeInfo(
            shardroute_pb2.GetNodeInfoRequest(), timeout=10, metadata=metadata
        )
        return reply


def refused_with(port: int, credentials: ClientCredentials, **kwargs: object) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        node_info(port, credentials, **kwargs)  # type: ignore[arg-type]
    code: grpc.StatusCode = info.value.code()
    return code


def first_http2_frame(port: int, pki: TestPki, cert: Path | None, key: Path | None) -> bytes:
    """A TLS handshake with the node's gRPC port (trusting its CA, showing `cert` if given),
    then HTTP/2's preface: the header of the server's first frame, or b"" when the server
    ends the connection first (TLS 1.3 finishes the client's side of the handshake before the
    server has checked the client's certificate: a refusal shows as the end of the stream)."""
    context = ssl.create_default_context(cafile=str(pki.ca))
    context.set_alpn_protocols(["h2"])
    if cert is not None and key is not None:
        context.load_cert_chain(cert, key)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:  # TCP: must work
        try:
            with context.wrap_socket(raw, server_hostname="localhost") as tls:
                tls.sendall(H2_PREFACE)
                header = b""
                while len(header) < 9 and (more := tls.recv(9 - len(header))):
                    header += more
                return header
        except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
            return b""


def test_a_token_is_required_and_checked(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret-token-0123456789\n")
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-token\n")
    with serve(tmp_path / "n", "--api-token-file", str(token), wait=False) as node:
        wait_answering(node.grpc_port, {"SHARDROUTE_TOKEN_FILE": str(token)})
        ok = node.cli("status", env={"SHARDROUTE_TOKEN_FILE": str(token)})
        assert ok.returncode == 0, ok.stderr
        # none or a wrong one: the CLI fails (exit 1) with the node's UNAUTHENTICATED
        for env in ({}, {"SHARDROUTE_TOKEN_FILE": str(wrong)}):
            denied = node.cli("announce", "ab" * 32, env=env)
            assert denied.returncode == 1, denied.stderr
            message = error_of(denied)
            assert "token" in message and message.endswith("(UNAUTHENTICATED)"), message
        # the flag works as well as the environment
        flagged = cli(node.grpc_port, "id", "--token-file", str(token))
        assert flagged.returncode == 0
        # the same through the client library and by hand-made metadata
        port = node.grpc_port
        assert node_info(port, ClientCredentials(token="s3cret-token-0123456789")).peer_id
        assert (
            refused_with(port, ClientCredentials(token="not-the-token"))
            is grpc.StatusCode.UNAUTHENTICATED
        )
        for given in (
            "Bearer not-the-token",
            "Bearer s3cret-token-012345678",  # a prefix of the token
            "Bearer s3cret-token-0123456789x",  # the token and more
            "Basic s3cret-token-0123456789",
            "s3cret-token-0123456789",
        ):
            code = refused_with(port, ClientCredentials(), metadata=(("authorization", given),))
            assert code is grpc.StatusCode.UNAUTHENTICATED, given
        # every kind of call is denied with a wrong token, the changing ones and the streamed
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            bad = (("authorization", "Bearer not-the-token"),)
            for method in ("SetMode", "Withdraw", "Connect", "Announce"):
                with pytest.raises(grpc.RpcError) as unary:
                    channel.unary_unary(f"/shardroute.v1.ShardRoute/{method}")(
                        b"", timeout=5, metadata=bad
                    )
                assert unary.value.code() is grpc.StatusCode.UNAUTHENTICATED, method
            with pytest.raises(grpc.RpcError) as streamed:
                list(
                    channel.unary_stream("/shardroute.v1.ShardRoute/FindProviders")(
                        b"", timeout=5, metadata=bad
                    )
                )
            assert streamed.value.code() is grpc.StatusCode.UNAUTHENTICATED
        # probes need no token
        with grpc.insecure_channel(f"127.0.0.1:{node.grpc_port}") as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            with pytest.raises(grpc.RpcError) as denied_info:
                channel.unary_unary("/shardroute.v1.ShardRoute/GetNodeInfo")(b"", timeout=5)
            assert denied_info.value.code() is grpc.StatusCode.UNAUTHENTICATED


def test_a_missing_token_file_gets_a_new_token_the_clients_can_read(tmp_path: Path) -> None:
    token = tmp_path / "secrets" / "token"
    with serve(tmp_path / "n", "--api-token-file", str(token), wait=False) as node:
        wait_answering(node.grpc_port, {"SHARDROUTE_TOKEN_FILE": str(token)})
        assert token.stat().st_mode & 0o777 == 0o600
        assert len(token.read_text().strip()) >= 40
        assert node.cli("id").returncode == 1  # and it is required
    made = token.read_text()
    with serve(tmp_path / "n", "--api-token-file", str(token), wait=False) as node:
        wait_answering(node.grpc_port, {"SHARDROUTE_TOKEN_FILE": str(token)})
    assert token.read_text() == made  # kept across restarts


def test_tls_with_a_server_certificate(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    server = ["--api-tls-cert", str(pki.server_cert), "--api-tls-key", str(pki.server_key)]
    trusting = {"SHARDROUTE_TLS_CA": str(pki.ca)}
    with serve(tmp_path / "tls", *server, wait=False) as node:
        wait_answering(node.grpc_port, trusting)
        # a client trusting the server's CA is served (no client certificate asked for)
        assert node.cli("status", env=trusting).returncode == 0
        assert node_info(node.grpc_port, ClientCredentials(tls_ca=pki.ca.read_bytes())).peer_id
        # a plaintext client is refused: the port speaks only TLS
        plaintext = node.cli("id")
        assert plaintext.returncode == 3, plaintext.stderr  # no TLS: nothing answers
        assert refused_with(node.grpc_port, ClientCredentials()) is grpc.StatusCode.UNAVAILABLE
        # a client that trusts another CA refuses the server
        distrust = node.cli("id", env={"SHARDROUTE_TLS_CA": str(pki.other_ca)})
        assert distrust.returncode == 3
        other = ClientCredentials(tls_ca=pki.other_ca.read_bytes())
        assert refused_with(node.grpc_port, other) is grpc.StatusCode.UNAVAILABLE


def test_tls_and_a_token_together_need_both(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    token = tmp_path / "token"
    token.write_text("t0ken-over-tls\n")
    with serve(
        tmp_path / "n",
        *("--api-tls-cert", str(pki.server_cert), "--api-tls-key", str(pki.server_key)),
        *("--api-token-file", str(token)),
        wait=False,
    ) as node:
        both = {"SHARDROUTE_TLS_CA": str(pki.ca), "SHARDROUTE_TOKEN_FILE": str(token)}
        wait_answering(node.grpc_port, both)
        ca = pki.ca.read_bytes()
        assert node_info(node.grpc_port, ClientCredentials(tls_ca=ca, token="t0ken-over-tls"))
        for creds in (ClientCredentials(tls_ca=ca), ClientCredentials(tls_ca=ca, token="nope")):
            assert refused_with(node.grpc_port, creds) is grpc.StatusCode.UNAUTHENTICATED
        no_tls = ClientCredentials(token="t0ken-over-tls")
        assert refused_with(node.grpc_port, no_tls) is grpc.StatusCode.UNAVAILABLE


def test_client_certificates_are_required_in_the_tls_handshake(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    server = ["--api-tls-cert", str(pki.server_cert), "--api-tls-key", str(pki.server_key)]
    trusting = {"SHARDROUTE_TLS_CA": str(pki.ca)}
    mutual = [*server, "--api-tls-client-ca", str(pki.ca)]
    ca = pki.ca.read_bytes()
    with serve(tmp_path / "mtls", *mutual, wait=False) as node:
        port = node.grpc_port
        with_cert = {
            **trusting,
            "SHARDROUTE_TLS_CERT": str(pki.client_cert),
            "SHARDROUTE_TLS_KEY": str(pki.client_key),
        }
        wait_answering(port, with_cert)
        # a certificate signed by the client CA: served, by the CLI and the client library
        assert node.cli("peers", env=with_cert).returncode == 0
        signed = ClientCredentials(
            tls_ca=ca, tls_cert=pki.client_cert.read_bytes(), tls_key=pki.client_key.read_bytes()
        )
        assert node_info(port, signed).peer_id
        # ... and at the TLS layer the server goes on to speak HTTP/2 (its SETTINGS frame)
        header = first_http2_frame(port, pki, pki.client_cert, pki.client_key)
        assert len(header) == 9 and header[3] == H2_SETTINGS, header
        # No certificate, or one from another CA: the handshake is refused (the server ends
        # the connection before any HTTP/2), so the client sees UNAVAILABLE, not a status the
        # server sent; the CLI cannot tell that from no node (exit 3).
        stranger = ClientCredentials(
            tls_ca=ca,
            tls_cert=pki.other_client_cert.read_bytes(),
            tls_key=pki.other_client_key.read_bytes(),
        )
        for creds, cert, key in (
            (ClientCredentials(tls_ca=ca), None, None),
            (stranger, pki.other_client_cert, pki.other_client_key),
        ):
            assert first_http2_frame(port, pki, cert, key) == b"", cert
            assert refused_with(port, creds) is grpc.StatusCode.UNAVAILABLE, cert
        no_cert = node.cli("id", env=trusting)
        assert no_cert.returncode == 3, no_cert.stderr
        wrong_ca = node.cli(
            "id",
            env={
                **trusting,
                "SHARDROUTE_TLS_CERT": str(pki.other_client_cert),
                "SHARDROUTE_TLS_KEY": str(pki.other_client_key),
            },
        )
        assert wrong_ca.returncode == 3, wrong_ca.stderr
        assert "--tls-cert" in no_cert.stderr and "--tls-cert" in wrong_ca.stderr
        # the node is still there for the right certificate afterwards
        assert node_info(port, signed).peer_id


def test_an_exposed_api_needs_protection_or_insecure_api(tmp_path: Path) -> None:
    port = free_port("0.0.0.0")
    command = [
        *SHARDROUTE,
        "serve",
        "--data-dir",
        str(tmp_path / "open"),
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
        "--grpc",
        f"0.0.0.0:{port}",
        "--metrics",
        "",
        "--routing-http",
        "",
    ]
    refused = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and f"0.0.0.0:{port}" in lines[0] and "--insecure-api" in lines[0]
    assert not (tmp_path / "open" / "identity.key").exists()  # nothing was started
    token = tmp_path / "token"
    token.write_text("t0ken-for-the-exposed-api\n")
    for extra in (["--insecure-api"], ["--api-token-file", str(token)]):
        proc = subprocess.Popen(
            [*command, *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().startswith("/ip4/127.0.0.1/tcp/")
        finally:
            proc.terminate()
            proc.wait(timeout=15)


def test_serve_on_0_0_0_0_7070_without_tls_or_token_refuses_to_start(tmp_path: Path) -> None:
    """The issue's own command line. The refusal comes before anything binds, so the port may
    be in use or free: the node never gets to it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHARDROUTE_")}
    command = [
        *SHARDROUTE,
        *("serve", "--data-dir", str(tmp_path / "open"), "--listen", "/ip4/127.0.0.1/tcp/0"),
        *("--grpc", "0.0.0.0:7070", "--metrics", "", "--routing-http", ""),
    ]
    refused = subprocess.run(command, capture_output=True, text=True, timeout=30, env=env)
    assert refused.returncode == 1, refused.stderr
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1, refused.stderr
    line = lines[0]
    assert "grpc_listen 0.0.0.0:7070" in line, line
    # it says what would let it start: TLS, a token, loopback, or --insecure-api
    for remedy in ("api_tls_cert", "api_token_file", "127.0.0.1", "--insecure-api"):
        assert remedy in line, (remedy, line)
    assert refused.stdout == ""  # no listen address printed: nothing started
    assert not (tmp_path / "open" / "identity.key").exists()
