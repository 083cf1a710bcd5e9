from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest

from shardroute.config import ConfigError, Settings, load_settings, setting_names

CONFIG = Path(__file__).resolve().parent.parent / "config" / "shardroute.toml"


def test_the_documented_file_is_exactly_the_defaults_and_names_every_setting() -> None:
    text = CONFIG.read_text()
    for name in setting_names():
        assert f"# {name} = " in text, f"{name} is not documented in config/shardroute.toml"
    uncommented = "\n".join(
        line[2:] for line in text.splitlines() if line.startswith("# ") and " = " in line
    )
    assert load_settings(overrides=tomllib.loads(uncommented)) == Settings()
    assert Settings().protocol == "/icn/kad/1.0.0" and Settings().k == 20
    assert Settings().query_timeout == 10 and Settings().refresh_interval == 300
    assert Settings().republish_interval == Settings().provider_ttl == 12 * 3600
    assert Settings().grpc_listen.startswith("127.0.0.1:")


def test_precedence_flags_then_environment_then_file(tmp_path: Path) -> None:
    file = tmp_path / "s.toml"
    file.write_text('k = 30\nquery_timeout = "20s"\nmode = "client"\nrefresh_interval = "1m"\n')
    env = {"SHARDROUTE_K": "25", "SHARDROUTE_QUERY_TIMEOUT": "15", "UNRELATED": "x"}
    settings = load_settings(config_file=file, env=env, overrides={"k": 40})
    assert settings.k == 40  # flag
    assert settings.query_timeout == 15  # environment over file
    assert settings.mode == "client" and settings.refresh_interval == 60  # file
    assert settings.protocol == "/icn/kad/1.0.0"  # default


@pytest.mark.parametrize(
    ("source", "value", "names"),
    [
        ("file", "kk = 3", "kk"),
        ("file", 'refresh_interval = "-5m"', "refresh_interval"),
        ("file", "listen = ['/ip4/999.1.1.1/tcp/1']", "listen"),
        ("env", {"SHARDROUTE_MODE": "relay"}, "mode"),
        ("env", {"SHARDROUTE_GRPC_LISTEN": "localhost"}, "grpc_listen"),
        ("flag", {"protocol": "icn/kad"}, "protocol"),
        ("flag", {"k": 0}, "k"),
        ("flag", {"request_timeout": 60}, "request_timeout"),
        ("file", "announce = ['not a multiaddr']", "announce"),
        ("env", {"SHARDROUTE_APPEND_ANNOUNCE": "/ip4/1.2.3.4/tcp/x"}, "append_announce"),
        ("env", {"SHARDROUTE_NO_ANNOUNCE": "10.0.0.0/8,172.17.0.0/33"}, "no_announce"),
        ("file", "no_announce = ['docker']", "no_announce"),
        ("env", {"SHARDROUTE_SHARE_PRIVATE_ADDRS": "maybe"}, "share_private_addrs"),
    ],
)
def test_a_wrong_value_names_the_setting_and_its_source(
    tmp_path: Path, source: str, value: object, names: str
) -> None:
    file = tmp_path / "bad.toml"
    with pytest.raises(ConfigError) as info:
        if source == "file":
            file.write_text(str(value))
            load_settings(config_file=file)
        elif source == "env":
            load_settings(env=value)  # type: ignore[arg-type]
        else:
            load_settings(overrides=value)  # type: ignore[arg-type]
    assert names in str(info.value)


def test_announce_settings_take_lists_from_the_environment() -> None:
    env = {
        "SHARDROUTE_APPEND_ANNOUNCE": "/ip4/203.0.113.1/tcp/4001, /dns4/node.example/tcp/4001",
        "SHARDROUTE_NO_ANNOUNCE": "172.17.0.0/16",
    }
    settings = load_settings(env=env)
    assert settings.append_announce == ("/ip4/203.0.113.1/tcp/4001", "/dns4/node.example/tcp/4001")
    assert settings.no_announce == ("172.17.0.0/16",)


def test_settings_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        Settings().k = 3  # type: ignore[misc]
