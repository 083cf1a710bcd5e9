"""Provider peer IDs in their own table: records refer to them by a small integer.

A peer ID is 38 bytes and was stored in every provider record and again in the expiry index;
one node provides many shards, so the same ID repeated millions of times.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "provider_peers",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("peer", sa.LargeBinary, nullable=False, unique=True),
    )
    op.create_table(
        "provider_records_v3",
        sa.Column("key", sa.LargeBinary, primary_key=True),
        sa.Column("provider_id", sa.Integer, primary_key=True),
        sa.Column("addrs", sa.LargeBinary, nullable=False),
        sa.Column("received_at", sa.Float, nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
        sa.Column("addrs_expire_at", sa.Float, nullable=True),
        sqlite_with_rowid=False,
    )
    op.execute("INSERT INTO provider_peers (peer) SELECT DISTINCT provider FROM provider_records")
    op.execute(
        "INSERT INTO provider_records_v3 "
        "SELECT r.key, p.id, r.addrs, r.received_at, r.expires_at, r.addrs_expire_at "
        "FROM provider_records r JOIN provider_peers p ON p.peer = r.provider"
    )
    op.drop_index("ix_provider_records_expires_at", "provider_records")
    op.drop_table("provider_records")
    op.rename_table("provider_records_v3", "provider_records")
    op.create_index("ix_provider_records_expires_at", "provider_records", ["expires_at"])


def downgrade() -> None:
    op.create_table(
        "provider_records_v2",
        sa.Column("key", sa.LargeBinary, primary_key=True),
        sa.Column("provider", sa.LargeBinary, primary_key=True),
        sa.Column("addrs", sa.LargeBinary, nullable=False),
        sa.Column("received_at", sa.Float, nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
        sa.Column("addrs_expire_at", sa.Float, nullable=True),
        sqlite_with_rowid=False,
    )
    op.execute(
        "INSERT INTO provider_records_v2 "
        "SELECT r.key, p.peer, r.addrs, r.received_at, r.expires_at, r.addrs_expire_at "
        "FROM provider_records r JOIN provider_peers p ON p.id = r.provider_id"
    )
    op.drop_index("ix_provider_records_expires_at", "provider_records")
    op.drop_table("provider_records")
    op.rename_table("provider_records_v2", "provider_records")
    op.create_index("ix_provider_records_expires_at", "provider_records", ["expires_at"])
    op.drop_table("provider_peers")
