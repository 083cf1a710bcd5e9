"""Printing for people and for programs: aligned fields, tables, JSON, a progress bar that only
a terminal gets."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any


def print_json(data: Any) -> None:
    print(json.dumps(data), flush=True)


def emit(args: argparse.Namespace, data: Any, human: str) -> None:
    if args.json:
        print_json(data)
    elif human:
        print(human, flush=True)


def fields(rows: Sequence[tuple[str, str | Sequence[str]]]) -> None:
    """`label:  value` lines, values aligned; a list value takes one line per item."""
    width = max(len(label) for label, _ in rows) + 1
    for label, value in rows:
        items = [value] if isinstance(value, str) else list(value) or ["(none)"]
        print(f"{label + ':':<{width}}  {items[0]}")
        for item in items[1:]:
            print(f"{'':<{width}}  {item}")


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    for line in [header, *rows]:
        cells = [cell.ljust(w) for cell, w in zip(line[:-1], widths[:-1], strict=True)]
        print("  ".join([*cells, line[-1]]).rstrip())


@contextmanager
def progress(label: str, total: int, *, enabled: bool) -> Iterator[Callable[[int], None]]:
    """A bar on stderr when it is a terminal and `enabled`; yields `advance(n)`."""
    if not (enabled and sys.stderr.isatty()):
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import MofNCompleteColumn, Progress, TimeRemainingColumn

    bar = Progress(
        *Progress.get_default_columns()[:-1],
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
    )
    task = bar.add_task(label, total=total)
    with bar:
        yield lambda n: bar.advance(task, n)
