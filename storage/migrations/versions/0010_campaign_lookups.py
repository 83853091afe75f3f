"""campaign_recipients: how often Twilio was asked about an uncertain send

A send that got no answer (a timeout, a dropped connection, a worker killed
mid-send) is settled by looking it up in Twilio's message list: found, it is
sent; not found, it is sent again. A lookup that fails is tried again later,
a few times; the count lives here.

Revision ID: 0010_campaign_lookups
Revises: 0009_call_addresses
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010_campaign_lookups"
down_revision: str | None = "0009_call_addresses"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("campaign_recipients") as batch:
        batch.add_column(sa.Column("lookups", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("campaign_recipients") as batch:
        batch.drop_column("lookups")
