"""ticket_labels: an index on lower(label) (PostgreSQL)

The ticket list's label filter matches regardless of case with lower(label)
on PostgreSQL, which the plain index on label cannot serve: every filter read
all of ticket_labels. SQLite's lower() folds ASCII only, so there the filter
matches the spellings in use and gets no such index.

A trigram (pg_trgm) index for the contacts' substring search is not added:
the extension is not available on every PostgreSQL the hub runs on (managed
services, a plain server without contrib), and a migration must not fail there.

Revision ID: 0011_label_lower_index
Revises: 0010_campaign_lookups
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011_label_lower_index"
down_revision: str | None = "0010_campaign_lookups"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEX = "ix_ticket_labels_label_lower"


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.create_index(INDEX, "ticket_labels", [sa.text("lower(label)")])


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.drop_index(INDEX, table_name="ticket_labels")
