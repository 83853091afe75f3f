"""email: threads on tickets, mailbox checkpoints

Tickets get a thread key: chat channels keep one current ticket per contact
and inbox (thread ""), email has one per conversation. The IMAP pollers keep
their UIDVALIDITY / last UID checkpoint and their lease in mailbox_checkpoints.

Revision ID: 0003_email
Revises: 0001
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import storage.models

revision: str = "0003_email"
down_revision: str | None = "0005_bot"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UNRESOLVED = sa.text("status != 'resolved'")


def upgrade() -> None:
    op.drop_index("uq_tickets_current", table_name="tickets")
    with op.batch_alter_table("tickets", schema=None) as batch_op:
        batch_op.add_column(sa.Column("thread_key", sa.String(length=64), server_default="", nullable=False))
    op.create_index(
        "uq_tickets_current",
        "tickets",
        ["contact_id", "inbox_id", "thread_key"],
        unique=True,
        sqlite_where=UNRESOLVED,
        postgresql_where=UNRESOLVED,
    )
    op.create_table(
        "mailbox_checkpoints",
        sa.Column("inbox_key", sa.String(length=200), nullable=False),
        sa.Column("folder", sa.String(length=500), nullable=False),
        sa.Column("uidvalidity", sa.BigInteger(), nullable=True),
        sa.Column("last_uid", sa.BigInteger(), nullable=False),
        sa.Column("lease_owner", sa.String(length=200), nullable=True),
        sa.Column("lease_until", storage.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("updated_at", storage.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("inbox_key", name=op.f("pk_mailbox_checkpoints")),
    )


def downgrade() -> None:
    op.drop_table("mailbox_checkpoints")
    op.drop_index("uq_tickets_current", table_name="tickets")
    # Going back to one current ticket per contact and inbox: all but the
    # newest unresolved email thread of each contact must be resolved first.
    op.execute(
        "UPDATE tickets SET status = 'resolved' WHERE status != 'resolved' AND id NOT IN "
        "(SELECT max(id) FROM tickets WHERE status != 'resolved' GROUP BY contact_id, inbox_id)"
    )
    with op.batch_alter_table("tickets", schema=None) as batch_op:
        batch_op.drop_column("thread_key")
    op.create_index(
        "uq_tickets_current",
        "tickets",
        ["contact_id", "inbox_id"],
        unique=True,
        sqlite_where=UNRESOLVED,
        postgresql_where=UNRESOLVED,
    )
