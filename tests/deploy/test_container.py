"""deploy/Dockerfile and deploy/compose.yaml against the real command line and settings: every
command a container runs parses with shardroute's own parser, its settings load, the ports
published and exposed are the ports it listens on, and the health check asks the port gRPC
listens on. Docker itself is not needed; compose's join script runs for real on loopback."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from shardroute.addrs import parse_multiaddr, split_p2p, tcp_endpoint
from shardroute.cli import build_parser
from shardroute.cli.client_commands import CONNECT_TIMEOUT
from shardroute.cli.serve import SERVE_FLAGS
from shardroute.config import Settings, load_settings
from shardroute.identity.keys import Ed25519PrivateKey
from shardroute.identity.peer_id import PeerId
from tests.support.serve import ENV, cli, free_port, serve

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
# Stands for a peer ID a script learns at run time.
SOME_PEER = str(PeerId.from_public_key(Ed25519PrivateKey.generate().public_key))


@dataclass
class Image:
    env: dict[str, str] = field(default_factory=dict)
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    expose: set[int] = field(default_factory=set)
    healthcheck: list[str] = field(default_factory=list)
    healthcheck_timeout: float = 30.0  # Docker's default
    files: dict[str, Path] = field(default_factory=dict)  # path in the image → in the repo


def _exec_form(text: str) -> list[str]:
    if text.startswith("["):
        return list(json.loads(text))
    return ["/bin/sh", "-c", text]


def _seconds(text: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)", text)
    assert match, text
    return float(match.group(1)) * {"ms": 0.001, "s": 1, "m": 60}[match.group(2)]


def read_dockerfile(path: Path) -> Image:
    image = Image()
    joined = re.sub(r"\\\n", " ", "\n".join(line for line in path.read_text().splitlines()))
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        rest = rest.strip()
        if keyword == "ENV":
            for token in shlex.split(rest):
                name, _, value = token.partition("=")
                image.env[name] = value
        elif keyword == "ENTRYPOINT":
            image.entrypoint = _exec_form(rest)
        elif keyword == "CMD":
            image.cmd = _exec_form(rest)
        elif keyword == "EXPOSE":
            image.expose = {int(p.split("/")[0]) for p in rest.split()}
        elif keyword == "COPY":
            *sources, dest = shlex.split(rest)
            if len(sources) == 1 and (ROOT / sources[0]).is_file():
                image.files[dest] = ROOT / sources[0]
        elif keyword == "HEALTHCHECK":
            options, _, command = rest.partition(" CMD ")
            for option in options.split():
                if option.startswith("--timeout="):
                    image.healthcheck_timeout = _seconds(option.split("=", 1)[1])
            image.healthcheck = _exec_form(command.strip())
    return image


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """compose's variable substitution: $$ is a dollar, ${X:-d}, ${X} and $X from `env`."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1) or m.group(3)
        default = m.group(2)
        return env.get(name) or (default if default is not None else "")

    return re.sub(r"\$\$|\$\{(\w+)(?::-([^}]*))?\}|\$(\w+)", one, value)


def compose() -> dict[str, Any]:
    loaded = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return dict(interpolate(loaded, {}))


def shardroute_services(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: service
        for name, service in spec["services"].items()
        if service.get("build", {}).get("dockerfile") == "deploy/Dockerfile"
    }


def container_env(image: Image, service: dict[str, Any]) -> dict[str, str]:
    env = dict(image.env)
    declared = service.get("environment", {})
    if isinstance(declared, list):
        declared = dict(item.split("=", 1) for item in declared)
    env.update({k: str(v) for k, v in declared.items()})
    return env


def argv_of(image: Image, service: dict[str, Any]) -> list[str]:
    entrypoint = service.get("entrypoint", image.entrypoint)
    command = service.get("command", [] if "entrypoint" in service else image.cmd)
    as_list = [shlex.split(x) if isinstance(x, str) else list(x) for x in (entrypoint, command)]
    return as_list[0] + as_list[1]


def shardroute_commands(argv: list[str], env: dict[str, str]) -> list[list[str]]:
    """The shardroute command lines a container runs: `argv` itself, or those of its sh script,
    variables expanded from `env` (ones the script sets at run time get a real peer ID)."""
    if argv[0] == "shardroute":
        return [argv]
    assert argv[0] in ("sh", "/bin/sh") and "c" in argv[1], f"not shardroute nor sh -c: {argv}"
    script = argv[2]
    found = []
    for fragment in re.findall(r"\bshardroute [^|)\n]*", script):
        fragment = fragment.replace('"$@"', "")
        expanded = re.sub(r"\$\{?(\w+)\}?", lambda m: env.get(m.group(1), SOME_PEER), fragment)
        found.append(shlex.split(expanded))
    assert found, f"the script runs no shardroute command: {script}"
    return found


def parse(argv: list[str], env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Any:
    """`argv` through the real parser as the container's environment would build it."""
    for name in list(os.environ):
        if name.startswith("SHARDROUTE_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert argv[0] == "shardroute", argv
    try:
        return build_parser().parse_args(argv[1:])
    except SystemExit as exc:
        raise AssertionError(f"{argv} does not parse (exit {exc.code})") from None


def serve_settings(args: Any, image: Image, env: dict[str, str]) -> Settings:
    config = None
    if args.config is not None:
        assert str(args.config) in image.files, f"{args.config} is not in the image"
        config = image.files[str(args.config)]
    overrides = {n: v for n in SERVE_FLAGS if (v := getattr(args, n)) is not None}
    return load_settings(config_file=config, env=env, overrides=overrides)


def listening_ports(settings: Settings) -> dict[str, int]:
    ports = {}
    for addr in settings.listen:
        endpoint = tcp_endpoint(parse_multiaddr(addr))
        assert endpoint is not None, addr
        ports[f"listen {addr}"] = endpoint[1]
    for name in ("grpc_listen", "metrics", "routing_http"):
        value = getattr(settings, name)
        assert value.rpartition(":")[0] in ("0.0.0.0", "[::]"), f"{name} {value}: container-only"
        ports[name] = int(value.rpartition(":")[2])
    return ports


def test_the_image_runs_a_node_on_the_ports_it_exposes_and_checks_its_health(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    image = read_dockerfile(DEPLOY / "Dockerfile")
    (argv,) = shardroute_commands(image.entrypoint + image.cmd, image.env)
    args = parse(argv, image.env, monkeypatch)
    assert args.command == "serve"
    settings = serve_settings(args, image, image.env)
    ports = listening_ports(settings)
    assert image.expose == set(ports.values())
    assert settings.data_dir == "/var/lib/shardroute"

    script = image.healthcheck
    assert script[:2] == ["/bin/sh", "-c"]
    probe, _, fallback = script[2].partition("||")
    assert fallback.strip() == "exit 1"  # Docker: 1 is unhealthy, 2 is reserved
    health = parse(shlex.split(probe), image.env, monkeypatch)
    assert health.command == "health"
    assert int(health.grpc.rpartition(":")[2]) == ports["grpc_listen"]
    assert health.timeout + CONNECT_TIMEOUT < image.healthcheck_timeout


def test_every_compose_node_runs_real_commands_on_the_ports_it_publishes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    image = read_dockerfile(DEPLOY / "Dockerfile")
    nodes = shardroute_services(compose())
    assert len(nodes) == 3
    parsed, settings, ports = {}, {}, {}
    for name, service in nodes.items():
        env = container_env(image, service)
        commands = shardroute_commands(argv_of(image, service), env)
        parsed[name] = [parse(c, env, monkeypatch) for c in commands]
        served = [a for a in parsed[name] if a.command == "serve"]
        assert len(served) == 1, (name, commands)
        settings[name] = serve_settings(served[0], image, env)
        ports[name] = listening_ports(settings[name])
    joins = []
    for name, service in nodes.items():
        for published in service.get("ports", []):
            inside = int(str(published).rsplit(":", 1)[1].split("/")[0])
            assert inside in ports[name].values(), (name, published, ports[name])
        for addr in settings[name].bootstrap:
            transport, peer = split_p2p(parse_multiaddr(addr))
            assert peer is not None, addr
            host, port = tcp_endpoint(transport) or ("", 0)
            assert host in nodes and host != name, addr
            assert port in ports[host].values(), (addr, ports[host])
            joins.append(host)
        # what a joining script asks for the seed's peer ID: the seed's gRPC port
        for asked in (a for a in parsed[name] if a.command == "id"):
            host, _, port = asked.grpc.rpartition(":")
            assert host in joins and int(port) == ports[host]["grpc_listen"], asked.grpc
        for dependency, condition in service.get("depends_on", {}).items():
            assert dependency in nodes and condition == {"condition": "service_healthy"}
            assert image.healthcheck or "healthcheck" in nodes[dependency]
    # two nodes join through the third, which serves at once and joins nothing itself
    assert len(joins) == 2 and len(set(joins)) == 1
    assert not settings[joins[0]].bootstrap

    prometheus = yaml.safe_load((DEPLOY / "prometheus/prometheus.yml").read_text())
    scraped = {
        target
        for job in prometheus["scrape_configs"]
        for group in job["static_configs"]
        for target in group["targets"]
    }
    assert scraped == {f"{name}:{p['metrics']}" for name, p in ports.items()}


@pytest.mark.network
def test_the_compose_join_script_joins_its_seed_for_real(tmp_path: Path) -> None:
    """The script shardroute-2 and -3 run, with the seed on loopback instead of the compose
    network and the image's config file at its place in the repository."""
    image = read_dockerfile(DEPLOY / "Dockerfile")
    service = shardroute_services(compose())["shardroute-2"]
    argv = argv_of(image, service)
    script = argv[2]
    for inside, outside in image.files.items():
        script = script.replace(inside, str(outside))
    grpc_port = free_port()
    with serve(tmp_path / "seed") as seed:
        seed_id = json.loads(seed.cli("id").stdout)["peer_id"]
        seed_port = seed.addrs[0].split("/")[4]
        env = {
            **ENV,
            "SEED_GRPC": f"127.0.0.1:{seed.grpc_port}",
            "SEED_ADDR": f"/dns4/localhost/tcp/{seed_port}",
            "PATH": f"{Path(sys.executable).parent}:{ENV.get('PATH', '')}",
        }
        for name in list(env):
            if name.startswith("SHARDROUTE_"):
                del env[name]
        loopback = [
            *("--data-dir", str(tmp_path / "joiner"), "--listen", "/ip4/127.0.0.1/tcp/0"),
            *("--grpc", f"127.0.0.1:{grpc_port}", "--metrics", "127.0.0.1:0"),
        ]
        with (tmp_path / "joiner.log").open("w") as log:
            proc = subprocess.Popen(
                [*argv[:2], script, *argv[3:], *loopback],
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                env=env,
            )
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().startswith("/ip4/127.0.0.1/"), (
                tmp_path / "joiner.log"
            ).read_text()
            deadline = time.monotonic() + 30
            while cli(grpc_port, "health").returncode != 0:
                assert time.monotonic() < deadline, (tmp_path / "joiner.log").read_text()
                time.sleep(0.3)
            peers = json.loads(cli(grpc_port, "peers").stdout)
            assert seed_id in {p["peer_id"] for p in peers}
        finally:
            proc.terminate()
            proc.wait(timeout=15)
