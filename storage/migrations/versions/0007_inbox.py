"""inbox: canned responses and per-agent read markers

Revision ID: 0007_inbox
Revises: 0001
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import storage.models

revision: str = "0007_inbox"
down_revision: str | None = "0004_telegram"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "canned_responses",
        sa.Column("id", PK, nullable=False),
        sa.Column("short_code", sa.String(length=64), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("created_by_id", PK, nullable=True),
        sa.Column("created_at", storage.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", storage.models.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["created_by_id"],
            ["agents.id"],
            name=op.f("fk_canned_responses_created_by_id_agents"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_canned_responses")),
        sa.UniqueConstraint("short_code", name=op.f("uq_canned_responses_short_code")),
    )
    op.create_table(
        "ticket_reads",
        sa.Column("agent_id", PK, nullable=False),
        sa.Column("ticket_id", PK, nullable=False),
        sa.Column("last_read_message_id", sa.BigInteger(), nullable=False),
        sa.Column("read_at", storage.models.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["agent_id"], ["agents.id"], name=op.f("fk_ticket_reads_agent_id_agents"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["ticket_id"], ["tickets.id"], name=op.f("fk_ticket_reads_ticket_id_tickets"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("agent_id", "ticket_id", name=op.f("pk_ticket_reads")),
    )
    with op.batch_alter_table("ticket_reads", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_ticket_reads_ticket_id"), ["ticket_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("ticket_reads", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_ticket_reads_ticket_id"))
    op.drop_table("ticket_reads")
    op.drop_table("canned_responses")
