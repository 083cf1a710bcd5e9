"""Alembic migrations of the SQLite store, applied at start and by `shardroute db upgrade`."""
