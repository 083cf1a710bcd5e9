"""`shardroute db upgrade`: migrate a stopped node's database."""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def db_upgrade(args: argparse.Namespace) -> int:
    from shardroute.config import load_settings
    from shardroute.store.engine import DATABASE_FILE, upgrade_database

    overrides = {"data_dir": args.data_dir} if args.data_dir else {}
    settings = load_settings(config_file=args.config, env=os.environ, overrides=overrides)
    path = Path(settings.data_dir) / DATABASE_FILE
    upgrade_database(path)
    print(f"{path}: schema up to date")
    return 0
