"""calls: room for SIP and client addresses

A call from or to a SIP address or a Twilio Client identity keeps that
address as the caller or the line; parsing takes up to 200 characters, the
columns took 40, so such a call failed on PostgreSQL.

Revision ID: 0009_call_addresses
Revises: 0008_campaigns
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009_call_addresses"
down_revision: str | None = "0008_campaigns"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = ("customer", "line")


def upgrade() -> None:
    # Batch mode: SQLite changes a column by copying the table.
    with op.batch_alter_table("calls") as batch:
        for name in COLUMNS:
            batch.alter_column(
                name, existing_type=sa.String(length=40), type_=sa.String(length=200), existing_nullable=False
            )


def downgrade() -> None:
    with op.batch_alter_table("calls") as batch:
        for name in COLUMNS:
            batch.alter_column(
                name, existing_type=sa.String(length=200), type_=sa.String(length=40), existing_nullable=False
            )
