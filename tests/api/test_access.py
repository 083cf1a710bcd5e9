"""Who may call the API, against real `serve` processes: a token, TLS, client certificates;
the right credentials work, wrong or missing ones get UNAUTHENTICATED (or no connection), the
health service answers probes without a token, and an API other hosts could reach does not
start without protection unless --insecure-api."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support.serve import SHARDROUTE, cli, free_port, serve
from tests.support.tls import make_pki


def wait_answering(port: int, env: Mapping[str, str], seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if cli(port, "id", env=env).returncode == 0:
            return
        time.sleep(0.2)
    raise AssertionError(f"gRPC on {port} never answered with {dict(env)}")


def error_of(result: subprocess.CompletedProcess[str]) -> str:
    return str(json.loads(result.stderr.strip().splitlines()[-1])["error"])


def test_a_token_is_required_and_checked(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret-token-0123456789\n")
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-token\n")
    with serve(tmp_path / "n", "--api-token-file", str(token), wait=False) as node:
        wait_answering(node.grpc_port, {"SHARDROUTE_TOKEN_FILE": str(token)})
        ok = node.cli("status", env={"SHARDROUTE_TOKEN_FILE": str(token)})
        assert ok.returncode == 0, ok.stderr
        for env in ({}, {"SHARDROUTE_TOKEN_FILE": str(wrong)}):
            denied = node.cli("announce", "ab" * 32, env=env)
            assert denied.returncode == 1, denied.stderr
            assert "token" in error_of(denied)
        # the flag works as well as the environment
        flagged = cli(node.grpc_port, "id", "--token-file", str(token))
        assert flagged.returncode == 0
        # probes need no token
        with grpc.insecure_channel(f"127.0.0.1:{node.grpc_port}") as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(  # type: ignore[no-untyped-call]
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


def test_tls_with_and_without_client_certificates(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    server = ["--api-tls-cert", str(pki.server_cert), "--api-tls-key", str(pki.server_key)]
    trusting = {"SHARDROUTE_TLS_CA": str(pki.ca)}
    with serve(tmp_path / "tls", *server, wait=False) as node:
        wait_answering(node.grpc_port, trusting)
        assert node.cli("status", env=trusting).returncode == 0
        plaintext = node.cli("id")
        assert plaintext.returncode == 3, plaintext.stderr  # no TLS: nothing answers
        distrust = node.cli("id", env={"SHARDROUTE_TLS_CA": str(pki.other_ca)})
        assert distrust.returncode == 3
    mutual = [*server, "--api-tls-client-ca", str(pki.ca)]
    with serve(tmp_path / "mtls", *mutual, wait=False) as node:
        with_cert = {
            **trusting,
            "SHARDROUTE_TLS_CERT": str(pki.client_cert),
            "SHARDROUTE_TLS_KEY": str(pki.client_key),
        }
        wait_answering(node.grpc_port, with_cert)
        assert node.cli("peers", env=with_cert).returncode == 0
        no_cert = node.cli("id", env=trusting)
        assert no_cert.returncode != 0


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
