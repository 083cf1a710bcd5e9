from __future__ import annotations

import json
import logging

import anyio
import pytest

from shardroute.obs.logging import JsonFormatter, configure_logging, log_context


@pytest.fixture(autouse=True)
def restore_root_logger() -> object:
    """configure_logging replaces the root handlers; give pytest's back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_json_lines_carry_the_query_id_into_child_tasks(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", "json")
    log = logging.getLogger("shardroute.test")

    async def main() -> None:
        with log_context(query_id="q-7f3a"):
            log.info("lookup started")
            async with anyio.create_task_group() as tg:
                tg.start_soon(lambda: anyio.to_thread.run_sync(lambda: None))
                tg.start_soon(child)
        log.info("outside")

    async def child() -> None:
        log.info("asked a peer")

    anyio.run(main, backend="asyncio")
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [(e["message"], e.get("query_id")) for e in lines] == [
        ("lookup started", "q-7f3a"),
        ("asked a peer", "q-7f3a"),
        ("outside", None),
    ]
    assert {"time", "level", "logger"} <= set(lines[0])
    assert isinstance(logging.getLogger().handlers[0].formatter, JsonFormatter)


def test_text_format_appends_context(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("debug", "text")
    with log_context(query_id="abc", peer="12D3KooW"):
        logging.getLogger("shardroute.test").debug("hello")
    assert capsys.readouterr().err.strip().endswith("hello query_id=abc peer=12D3KooW")
