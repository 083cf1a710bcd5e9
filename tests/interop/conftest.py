import pytest

from shardroute.addrs import parse_multiaddr
from shardroute.identity.keys import Ed25519PrivateKey
from shardroute.net.host import Host

LOOPBACK = parse_multiaddr("/ip4/127.0.0.1/tcp/0")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/interop" in str(item.fspath):
            item.add_marker(pytest.mark.interop)


def new_host() -> Host:
    return Host(Ed25519PrivateKey.generate(), listen_addrs=[LOOPBACK])
