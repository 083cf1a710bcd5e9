"""Counts for the provider-record quotas: records per provider and per source IP group.

A received record remembers the IP group its sender's connection came from; triggers keep
`provider_peers.records` and `provider_groups.records` equal to the rows of
`provider_records`, so checking a quota is a point read instead of a count.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

TRIGGERS = (
    """CREATE TRIGGER provider_records_counted AFTER INSERT ON provider_records BEGIN
        UPDATE provider_peers SET records = records + 1 WHERE id = NEW.provider_id;
        INSERT INTO provider_groups (grp, records) SELECT NEW.source_group, 1
            WHERE NEW.source_group IS NOT NULL
            ON CONFLICT (grp) DO UPDATE SET records = records + 1;
    END""",
    """CREATE TRIGGER provider_records_uncounted AFTER DELETE ON provider_records BEGIN
        UPDATE provider_peers SET records = records - 1 WHERE id = OLD.provider_id;
        UPDATE provider_groups SET records = records - 1 WHERE grp = OLD.source_group;
    END""",
)


def upgrade() -> None:
    op.add_column(
        "provider_peers", sa.Column("records", sa.Integer, nullable=False, server_default="0")
    )
    op.add_column("provider_records", sa.Column("source_group", sa.Text, nullable=True))
    op.create_table(
        "provider_groups",
        sa.Column("grp", sa.Text, primary_key=True),
        sa.Column("records", sa.Integer, nullable=False),
        sqlite_with_rowid=False,
    )
    op.execute(
        "UPDATE provider_peers SET records = "
        "(SELECT count(*) FROM provider_records r WHERE r.provider_id = provider_peers.id)"
    )
    for trigger in TRIGGERS:
        op.execute(trigger)


def downgrade() -> None:
    op.execute("DROP TRIGGER provider_records_uncounted")
    op.execute("DROP TRIGGER provider_records_counted")
    op.drop_table("provider_groups")
    # SQLite 3.35+ drops columns in place (batch mode would rebuild the WITHOUT ROWID table).
    op.execute("ALTER TABLE provider_records DROP COLUMN source_group")
    op.execute("ALTER TABLE provider_peers DROP COLUMN records")
