"""`python -m shardroute.store.migrate PATH`: bring the database at PATH to the current schema
(what `engine.upgrade_in_child` runs). Exit 1 with the reason on stderr if it cannot."""

from __future__ import annotations

import sys
from pathlib import Path

from shardroute.errors import StoreError
from shardroute.store.engine import upgrade_database


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m shardroute.store.migrate PATH", file=sys.stderr)
        return 2
    try:
        upgrade_database(Path(argv[0]))
    except StoreError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
