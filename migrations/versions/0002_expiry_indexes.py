"""Indexes for expiry sweeps and the republish schedule.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_provider_records_expires_at", "provider_records", ["expires_at"])
    op.create_index("ix_announcements_next_publish_at", "announcements", ["next_publish_at"])


def downgrade() -> None:
    op.drop_index("ix_announcements_next_publish_at", "announcements")
    op.drop_index("ix_provider_records_expires_at", "provider_records")
