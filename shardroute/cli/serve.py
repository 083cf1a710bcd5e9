"""`shardroute serve`: run a node until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import resource
import signal
from collections.abc import Callable, Sequence
from typing import Any

import anyio
import prometheus_client

from shardroute import limits
from shardroute.app import App
from shardroute.config import Settings, load_settings
from shardroute.obs.logging import configure_logging
from shardroute.obs.metrics import Metrics

log = logging.getLogger(__name__)


def raise_file_limit() -> int:
    """Lift the soft limit on open files to the hard one (go-libp2p does the same): every
    connection is a descriptor, and the resource manager, not the kernel's default of 1,024,
    should be what refuses peers. Returns the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            return soft
    return hard


def tune_collector() -> None:
    """Set the garbage collector for a long-running node, once start-up is done.

    What start-up built (modules, migrations, the schema) lives as long as the process;
    frozen, it is left out of every later full collection, which otherwise walks it all and
    stalls the API for tens of milliseconds (seen with py-spy). The youngest generation is
    collected every `limits.GC_YOUNG_THRESHOLD` allocations rather than every 700."""
    gc.collect()
    gc.freeze()
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(limits.GC_YOUNG_THRESHOLD, middle, oldest)


async def run_node(settings: Settings, announce: Callable[[Sequence[str]], None]) -> None:
    """Run until SIGINT or SIGTERM; `announce` receives the full listen multiaddrs once bound."""
    log.debug("open-file limit: %d", raise_file_limit())
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        node = App(settings, metrics=Metrics(prometheus_client.REGISTRY), migrate_in_child=True)
        async with node as app:
            tune_collector()
            # Once started: a refused start prints its one error line and nothing else.
            log.info("event loop: %s", type(asyncio.get_running_loop()).__module__.split(".")[0])
            announce([str(a) for a in app.listen_multiaddrs()])
            async for signum in signals:
                log.info("received %s, shutting down", signal.Signals(signum).name)
                break
    log.info("node stopped")


# The settings `serve` takes as flags (each one `--name-with-dashes`).
SERVE_FLAGS = (
    "listen",
    "bootstrap",
    "protocol",
    "mode",
    "grpc_listen",
    "metrics",
    "routing_http",
    "data_dir",
    "log_level",
    "log_format",
    "event_loop",
    "api_token_file",
    "api_tls_cert",
    "api_tls_key",
    "api_tls_client_ca",
    "insecure_api",
)


def serve(args: argparse.Namespace) -> int:
    # Flags left out fall through to the environment, the file and the defaults.
    overrides: dict[str, Any] = {
        name: value for name in SERVE_FLAGS if (value := getattr(args, name)) is not None
    }
    settings = load_settings(config_file=args.config, env=os.environ, overrides=overrides)
    configure_logging(settings.log_level, settings.log_format)

    def announce(lines: Sequence[str]) -> None:
        for line in lines:
            print(line, flush=True)

    anyio.run(
        run_node,
        settings,
        announce,
        backend="asyncio",
        backend_options={"use_uvloop": settings.event_loop == "uvloop"},
    )
    return 0
