"""Settings for nodes started by tests: loopback, ephemeral ports, no API or metrics servers
unless a test asks, and no IP diversity (every test node shares 127.0.0.1)."""

from __future__ import annotations

import dataclasses
from typing import Any

from shardroute.config import Settings

LOOPBACK = dataclasses.replace(
    Settings(),
    listen=("/ip4/127.0.0.1/tcp/0",),
    grpc_listen="",
    metrics="",
    routing_http="",
    diversity_filter=False,
)


def loopback(**overrides: Any) -> Settings:
    return dataclasses.replace(LOOPBACK, **overrides)
