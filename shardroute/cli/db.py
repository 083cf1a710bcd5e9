"""`shardroute db upgrade`: migrate a stopped node's database."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from shardroute.cli.outcome import CliError, Exit


def db_upgrade(args: argparse.Namespace) -> int:
    from shardroute.config import load_settings
    from shardroute.datadir import DataDirLock
    from shardroute.store.engine import DATABASE_FILE, upgrade_database

    overrides = {"data_dir": args.data_dir} if args.data_dir else {}
    settings = load_settings(config_file=args.config, env=os.environ, overrides=overrides)
    folder = Path(settings.data_dir)
    path = folder / DATABASE_FILE
    if not path.exists() and not args.create:
        raise CliError(
            Exit.USAGE,
            f"{folder} holds no shardroute database ({DATABASE_FILE}); check --data-dir, or "
            "give --create to make a new one",
        )
    with DataDirLock(folder):  # not while a node runs on it
        upgrade_database(path)
    print(f"{path}: schema up to date")
    return Exit.OK
