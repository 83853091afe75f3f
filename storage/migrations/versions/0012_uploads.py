"""uploads: files uploaded for a message, until one uses them or they are removed

Agents and web chat visitors upload files before the message that carries
them is stored; a file no message took within attachments.unused_grace_seconds
is removed. Files uploaded before this revision have no row and are kept.

Revision ID: 0012_uploads
Revises: 0011_label_lower_index
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import storage.models

revision: str = "0012_uploads"
down_revision: str | None = "0011_label_lower_index"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "uploads",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("agent_id", PK, nullable=True),
        sa.Column("visitor_id", sa.String(length=200), nullable=True),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("after_message_id", sa.BigInteger(), nullable=False),
        sa.Column("created_at", storage.models.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["agent_id"], ["agents.id"], name=op.f("fk_uploads_agent_id_agents"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_uploads")),
    )
    with op.batch_alter_table("uploads") as batch_op:
        batch_op.create_index(batch_op.f("ix_uploads_created_at"), ["created_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("uploads") as batch_op:
        batch_op.drop_index(batch_op.f("ix_uploads_created_at"))
    op.drop_table("uploads")
