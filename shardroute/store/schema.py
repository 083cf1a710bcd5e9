"""The SQLite schema as SQLAlchemy Core tables: alembic's target metadata. Migrations create
the schema; this is its description in one place. The repositories write plain SQL against it
(a compiled Core statement per call cost more than the write). Keys and peer IDs are stored as
raw bytes (WITHOUT ROWID tables keyed by them keep a provider record near 150 bytes on disk)."""

from __future__ import annotations

from sqlalchemy import Column, Float, Index, Integer, LargeBinary, MetaData, Table, Text

metadata = MetaData()

# Peer IDs of providers, so records carry a small integer instead of 38 bytes (migration 0003).
provider_peers = Table(
    "provider_peers",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("peer", LargeBinary, nullable=False, unique=True),
    # Rows of provider_records with this provider, kept by triggers (migration 0004).
    Column("records", Integer, nullable=False, server_default="0"),
)

# Records this node stores for other providers (ADD_PROVIDER received).
provider_records = Table(
    "provider_records",
    metadata,
    Column("key", LargeBinary, primary_key=True),
    Column("provider_id", Integer, primary_key=True),
    Column("addrs", LargeBinary, nullable=False),  # uvarint-framed binary multiaddrs
    Column("received_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
    Column("addrs_expire_at", Float, nullable=True),
    # The IP group of the connection a received record came over; None for our own records
    # and for senders exempt from group limits (loopback, private space when configured).
    Column("source_group", Text, nullable=True),
    sqlite_with_rowid=False,
)

# Records per source IP group, kept by triggers (migration 0004).
provider_groups = Table(
    "provider_groups",
    metadata,
    Column("grp", Text, primary_key=True),
    Column("records", Integer, nullable=False),
    sqlite_with_rowid=False,
)

# Shards this node announces: what republishing works from.
announcements = Table(
    "announcements",
    metadata,
    Column("key", LargeBinary, primary_key=True),  # the multihash (DHT key)
    Column("codec", Integer, nullable=False),  # CID codec, to give back the CID the caller used
    Column("announced_at", Float, nullable=False),
    Column("next_publish_at", Float, nullable=False),
    Column("stored_on", Integer, nullable=False, default=0),
    sqlite_with_rowid=False,
)

routing_peers = Table(
    "routing_peers",
    metadata,
    Column("peer", LargeBinary, primary_key=True),
    Column("addrs", LargeBinary, nullable=False),
    Column("last_seen", Float, nullable=False),
    Column("last_useful", Float, nullable=True),
    sqlite_with_rowid=False,
)

value_records = Table(
    "value_records",
    metadata,
    Column("key", LargeBinary, primary_key=True),
    Column("value", LargeBinary, nullable=False),
    Column("received_at", Float, nullable=False),
    sqlite_with_rowid=False,
)

Index("ix_provider_records_expires_at", provider_records.c.expires_at)
Index("ix_announcements_next_publish_at", announcements.c.next_publish_at)
