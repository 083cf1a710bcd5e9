"""Provider records, announcements, routing table and value records.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "provider_records",
        sa.Column("key", sa.LargeBinary, primary_key=True),
        sa.Column("provider", sa.LargeBinary, primary_key=True),
        sa.Column("addrs", sa.LargeBinary, nullable=False),
        sa.Column("received_at", sa.Float, nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
        sa.Column("addrs_expire_at", sa.Float, nullable=True),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "announcements",
        sa.Column("key", sa.LargeBinary, primary_key=True),
        sa.Column("codec", sa.Integer, nullable=False),
        sa.Column("announced_at", sa.Float, nullable=False),
        sa.Column("next_publish_at", sa.Float, nullable=False),
        sa.Column("stored_on", sa.Integer, nullable=False, server_default="0"),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "routing_peers",
        sa.Column("peer", sa.LargeBinary, primary_key=True),
        sa.Column("addrs", sa.LargeBinary, nullable=False),
        sa.Column("last_seen", sa.Float, nullable=False),
        sa.Column("last_useful", sa.Float, nullable=True),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "value_records",
        sa.Column("key", sa.LargeBinary, primary_key=True),
        sa.Column("value", sa.LargeBinary, nullable=False),
        sa.Column("received_at", sa.Float, nullable=False),
        sqlite_with_rowid=False,
    )


def downgrade() -> None:
    for table in ("value_records", "routing_peers", "announcements", "provider_records"):
        op.drop_table(table)
