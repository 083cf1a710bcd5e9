"""Settings: embedded defaults, then a TOML file, then SHARDROUTE_* variables, then flags.

Every setting has one name used everywhere: the TOML key, the flag's override key and, upper-
cased with a SHARDROUTE_ prefix, the environment variable (SHARDROUTE_DATA_DIR, SHARDROUTE_K).
A wrong value stops start-up with a ConfigError naming the setting and where it came from.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal, get_args

from shardroute import limits
from shardroute.errors import ShardrouteError


class ConfigError(ShardrouteError):
    """A setting has a value that cannot be used."""


Mode = Literal["server", "client"]
LogFormat = Literal["text", "json"]
EventLoop = Literal["uvloop", "asyncio"]
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


@dataclass(frozen=True, slots=True)
class Settings:
    listen: tuple[str, ...] = ("/ip4/0.0.0.0/tcp/4001",)
    bootstrap: tuple[str, ...] = ()
    announce: tuple[str, ...] = ()
    append_announce: tuple[str, ...] = ()
    no_announce: tuple[str, ...] = ()
    share_private_addrs: bool = False
    data_dir: str = "./shardroute-data"
    protocol: str = "/icn/kad/1.0.0"
    mode: Mode = "server"
    k: int = limits.KAD_K
    alpha: int = limits.KAD_ALPHA
    beta: int = limits.KAD_BETA
    provider_alpha: int = limits.KAD_PROVIDER_ALPHA
    stall_timeout: float = limits.KAD_STALL_TIMEOUT
    query_timeout: float = 10.0
    request_timeout: float = 10.0
    refresh_interval: float = 300.0
    republish_interval: float = 12 * 3600.0
    provider_ttl: float = 12 * 3600.0
    provider_addr_ttl: float = 12 * 3600.0
    expiry_interval: float = 600.0
    max_providers_per_key: int = 100
    max_records_per_peer: int = limits.KAD_MAX_RECORDS_PER_PEER
    max_records_per_ip_group: int = limits.KAD_MAX_RECORDS_PER_IP_GROUP
    max_providers_per_key_per_group: int = limits.KAD_MAX_PROVIDERS_PER_KEY_PER_GROUP
    value_quorum: int = 0
    diversity_filter: bool = True
    diversity_exempt_private: bool = True
    grpc_listen: str = "127.0.0.1:7070"
    # Who may call the API (gRPC and HTTP routing): a bearer token in a file and/or TLS
    # (a certificate and key; with a client CA, callers need certificates too). An address
    # other hosts can reach needs one of them unless insecure_api.
    api_token_file: str = ""
    api_tls_cert: str = ""
    api_tls_key: str = ""
    api_tls_client_ca: str = ""
    insecure_api: bool = False
    metrics: str = "127.0.0.1:9464"
    routing_http: str = "127.0.0.1:8190"
    log_level: str = "info"
    log_format: LogFormat = "text"
    # uvloop runs the same asyncio code on libuv, with less CPU per socket event.
    event_loop: EventLoop = "uvloop"
    max_connections: int = limits.MAX_CONNECTIONS
    # Per-address budgets (connections, pending upgrades, records per key) spare loopback
    # peers, which are this host's own processes; a test network of one host turns it off.
    exempt_loopback_limits: bool = True
    max_streams_per_connection: int = limits.YAMUX_MAX_STREAMS
    announce_batch_limit: int = 10_000


_DURATIONS = {
    "query_timeout",
    "stall_timeout",
    "request_timeout",
    "refresh_interval",
    "republish_interval",
    "provider_ttl",
    "provider_addr_ttl",
    "expiry_interval",
}
_POSITIVE_INTS = {
    "k",
    "alpha",
    "beta",
    "provider_alpha",
    "max_providers_per_key",
    "max_records_per_peer",
    "max_records_per_ip_group",
    "max_providers_per_key_per_group",
    "max_connections",
    "max_streams_per_connection",
    "announce_batch_limit",
}
_NON_NEGATIVE_INTS = {"value_quorum"}
_BOOLS = {f.name for f in fields(Settings) if f.type in ("bool", bool)}
_LEVELS = {"debug", "info", "warning", "error", "critical"}


def setting_names() -> list[str]:
    return [f.name for f in fields(Settings)]


def _parse_duration(name: str, value: Any, source: str) -> float:
    if isinstance(value, bool):
        raise ConfigError(f"{name} ({source}): expected a duration, got {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = float(m.group(1)) * _UNITS[m.group(2)]
    else:
        raise ConfigError(
            f"{name} ({source}): {value!r} is not a duration like 10, '10s', '5m' or '12h'"
        )
    if seconds <= 0:
        raise ConfigError(f"{name} ({source}): must be positive, got {value!r}")
    return seconds


def _as_list(name: str, value: Any, source: str) -> tuple[str, ...]:
    if isinstance(value, str):
        items = [v.strip() for v in value.split(",") if v.strip()]
    elif isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        items = [v.strip() for v in value]
    else:
        raise ConfigError(f"{name} ({source}): expected a list of multiaddrs, got {value!r}")
    from shardroute.addrs import parse_multiaddr, split_p2p, tcp_endpoint

    for item in items:
        try:
            addr = parse_multiaddr(item)
            transport, peer = split_p2p(addr)
        except ValueError as exc:
            raise ConfigError(f"{name} ({source}): {exc}") from None
        if name == "listen" and tcp_endpoint(addr) is None:
            raise ConfigError(f"{name} ({source}): {_unsupported(item)}")
        if name == "bootstrap" and peer is None and not item.startswith("/dnsaddr/"):
            raise ConfigError(
                f"{name} ({source}): {item} names no peer: a bootstrap address ends in "
                "/p2p/<peer ID> (as `shardroute serve` and `shardroute id` print it) or is a "
                "/dnsaddr/ seed"
            )
        dialable = tcp_endpoint(transport) is not None or item.startswith("/dnsaddr/")
        if name == "bootstrap" and not dialable:
            raise ConfigError(f"{name} ({source}): {_unsupported(item)}")
    return tuple(items)


def _unsupported(item: str) -> str:
    """Why `item` cannot be listened on or dialed: shardroute speaks TCP only."""
    for name, what in (("quic", "QUIC"), ("udp", "UDP"), ("ws", "WebSocket"), ("webrtc", "WebRTC")):
        if f"/{name}" in item:
            return f"{item}: {what} is not supported; shardroute speaks TCP (/ip4/.../tcp/4001)"
    return f"{item}: not a TCP address (/ip4/<ip>/tcp/<port> or /ip6/<ip>/tcp/<port>)"


def _as_cidrs(name: str, value: Any, source: str) -> tuple[str, ...]:
    if isinstance(value, str):
        items = [v.strip() for v in value.split(",") if v.strip()]
    elif isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        items = [v.strip() for v in value]
    else:
        raise ConfigError(f"{name} ({source}): expected a list of CIDR blocks, got {value!r}")
    for item in items:
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise ConfigError(
                f"{name} ({source}): {item!r} is not a CIDR block like 10.0.0.0/8 or fd00::/8"
            ) from None
    return tuple(items)


def _host_port(name: str, value: Any, source: str) -> str:
    """HOST:PORT, or empty to turn that listener off."""
    if not isinstance(value, str):
        raise ConfigError(f"{name} ({source}): expected HOST:PORT, got {value!r}")
    if not value:
        return value
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{name} ({source}): {value!r} is not HOST:PORT (e.g. 127.0.0.1:7070)")
    return value


def _convert(name: str, value: Any, source: str) -> Any:
    if name in _DURATIONS:
        return _parse_duration(name, value, source)
    if name in ("listen", "bootstrap", "announce", "append_announce"):
        return _as_list(name, value, source)
    if name == "no_announce":
        return _as_cidrs(name, value, source)
    if name in _POSITIVE_INTS:
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} ({source}): expected a positive whole number, got {value!r}")
        return value
    if name in _NON_NEGATIVE_INTS:
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"{name} ({source}): expected a whole number >= 0, got {value!r}")
        return value
    if name in _BOOLS:
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
            return value.lower() in ("true", "1", "yes")
        if not isinstance(value, bool):
            raise ConfigError(f"{name} ({source}): expected true or false, got {value!r}")
        return value
    if name in ("grpc_listen", "metrics", "routing_http"):
        return _host_port(name, value, source)
    if not isinstance(value, str):
        raise ConfigError(f"{name} ({source}): expected text, got {value!r}")
    if name == "mode" and value not in get_args(Mode):
        raise ConfigError(f"mode ({source}): must be 'server' or 'client', got {value!r}")
    if name == "log_format" and value not in get_args(LogFormat):
        raise ConfigError(f"log_format ({source}): must be 'text' or 'json', got {value!r}")
    if name == "event_loop" and value not in get_args(EventLoop):
        raise ConfigError(f"event_loop ({source}): must be 'uvloop' or 'asyncio', got {value!r}")
    if name == "log_level" and value.lower() not in _LEVELS:
        raise ConfigError(f"log_level ({source}): must be one of {sorted(_LEVELS)}, got {value!r}")
    if name == "protocol" and (not value.startswith("/") or len(value) > 200):
        raise ConfigError(f"protocol ({source}): a protocol ID starts with '/', got {value!r}")
    if name == "data_dir" and not value:
        raise ConfigError(f"data_dir ({source}): must not be empty")
    return value.lower() if name == "log_level" else value


def load_settings(
    *,
    config_file: Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    names = set(setting_names())
    values: dict[str, Any] = {}
    if config_file is not None:
        try:
            raw = tomllib.loads(Path(config_file).read_text())
        except OSError as exc:
            raise ConfigError(f"config file {config_file}: {exc.strerror or exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {config_file}: not valid TOML: {exc}") from None
        for key, value in raw.items():
            if key not in names:
                raise ConfigError(f"{key} (file {config_file}): unknown setting")
            values[key] = _convert(key, value, f"file {config_file}")
    for key, value in (env or {}).items():
        if not key.startswith("SHARDROUTE_"):
            continue
        name = key[len("SHARDROUTE_") :].lower()
        if name in names:
            values[name] = _convert(name, value, f"environment {key}")
    for name, value in (overrides or {}).items():
        if name not in names:
            raise ConfigError(f"{name} (flag): unknown setting")
        if value is not None:
            values[name] = _convert(name, value, f"flag --{name.replace('_', '-')}")
    settings = dataclasses.replace(Settings(), **values)
    if settings.request_timeout > settings.query_timeout:
        raise ConfigError("request_timeout: must not exceed query_timeout")
    return settings
