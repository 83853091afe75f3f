"""telegram: bot state (polling offset and lease), unreachable identities

Revision ID: 0004_telegram
Revises: 0001
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import storage.models

revision: str = "0004_telegram"
down_revision: str | None = "0002_twilio"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "telegram_bot_state",
        sa.Column("bot", sa.String(length=64), nullable=False),
        sa.Column("update_offset", sa.BigInteger(), nullable=False),
        sa.Column("poller", sa.String(length=200), nullable=True),
        sa.Column("lease_until", storage.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("updated_at", storage.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("bot", name=op.f("pk_telegram_bot_state")),
    )
    with op.batch_alter_table("identities", schema=None) as batch_op:
        batch_op.add_column(sa.Column("unreachable_at", storage.models.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("unreachable_reason", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("identities", schema=None) as batch_op:
        batch_op.drop_column("unreachable_reason")
        batch_op.drop_column("unreachable_at")
    op.drop_table("telegram_bot_state")
