"""routing: queues, presence, SLA deadlines and cycles, round-robin cursors, editable rules

Revision ID: 0006_routing
Revises: 0001
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import storage.models

revision: str = '0006_routing'
down_revision: str | None = "0003_email"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Existing rows get server defaults for the new NOT NULL columns; new rows
    # get theirs from the models.
    op.create_table('routing_documents',
    sa.Column('key', sa.String(length=40), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('source', sa.String(length=20), nullable=False),
    sa.Column('digest', sa.String(length=64), nullable=False),
    sa.Column('body', sa.JSON(), nullable=False),
    sa.Column('updated_at', storage.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_by', sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint('key', name=op.f('pk_routing_documents'))
    )
    op.create_table('routing_cursors',
    sa.Column('team_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('agent_id', sa.BigInteger(), nullable=True),
    sa.Column('updated_at', storage.models.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['team_id'], ['teams.id'], name=op.f('fk_routing_cursors_team_id_teams'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('team_id', name=op.f('pk_routing_cursors'))
    )
    op.create_table('automation_runs',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('rule', sa.String(length=100), nullable=False),
    sa.Column('ticket_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('marker', sa.String(length=100), nullable=False),
    sa.Column('occasion_at', storage.models.UTCDateTime(timezone=True), nullable=True),
    sa.Column('created_at', storage.models.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['ticket_id'], ['tickets.id'], name=op.f('fk_automation_runs_ticket_id_tickets'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_automation_runs')),
    sa.UniqueConstraint('rule', 'ticket_id', 'marker', name='uq_automation_runs_rule_ticket_marker')
    )
    with op.batch_alter_table('automation_runs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_automation_runs_ticket_id'), ['ticket_id'], unique=False)

    op.create_table('ticket_cycles',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('ticket_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('number', sa.Integer(), nullable=False),
    sa.Column('sla_policy', sa.String(length=100), nullable=True),
    sa.Column('started_at', storage.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('first_response_due_at', storage.models.UTCDateTime(timezone=True), nullable=True),
    sa.Column('first_response_at', storage.models.UTCDateTime(timezone=True), nullable=True),
    sa.Column('resolved_at', storage.models.UTCDateTime(timezone=True), nullable=True),
    sa.Column('breaches', sa.JSON(), nullable=False),
    sa.ForeignKeyConstraint(['ticket_id'], ['tickets.id'], name=op.f('fk_ticket_cycles_ticket_id_tickets'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_ticket_cycles')),
    sa.UniqueConstraint('ticket_id', 'number', name='uq_ticket_cycles_ticket_number')
    )
    with op.batch_alter_table('agents', schema=None) as batch_op:
        batch_op.add_column(sa.Column('presence_choice', sa.String(length=20), nullable=False, server_default=sa.text("'online'")))
        batch_op.add_column(sa.Column('presence_changed_at', storage.models.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('last_seen_at', storage.models.UTCDateTime(timezone=True), nullable=True))

    with op.batch_alter_table('tickets', schema=None) as batch_op:
        batch_op.add_column(sa.Column('queued_at', storage.models.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('language', sa.String(length=8), nullable=True))
        batch_op.add_column(sa.Column('skills', sa.JSON(), nullable=False, server_default=sa.text("'[]'")))
        batch_op.add_column(sa.Column('sla_policy', sa.String(length=100), nullable=True))
        batch_op.add_column(sa.Column('sla_cycle', sa.Integer(), nullable=False, server_default=sa.text('1')))
        batch_op.add_column(sa.Column('cycle_started_at', storage.models.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('first_response_due_at', storage.models.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('next_response_due_at', storage.models.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('resolution_due_at', storage.models.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('sla_deadlines', sa.JSON(), nullable=False, server_default=sa.text("'{}'")))
        batch_op.add_column(sa.Column('sla_fired', sa.JSON(), nullable=False, server_default=sa.text("'[]'")))
        batch_op.add_column(sa.Column('sla_next_check_at', storage.models.UTCDateTime(timezone=True), nullable=True))
        batch_op.create_index('ix_tickets_queue', ['team_id', 'queued_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_tickets_sla_next_check_at'), ['sla_next_check_at'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('tickets', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_tickets_sla_next_check_at'))
        batch_op.drop_index('ix_tickets_queue')
        batch_op.drop_column('sla_next_check_at')
        batch_op.drop_column('sla_fired')
        batch_op.drop_column('sla_deadlines')
        batch_op.drop_column('resolution_due_at')
        batch_op.drop_column('next_response_due_at')
        batch_op.drop_column('first_response_due_at')
        batch_op.drop_column('cycle_started_at')
        batch_op.drop_column('sla_cycle')
        batch_op.drop_column('sla_policy')
        batch_op.drop_column('skills')
        batch_op.drop_column('language')
        batch_op.drop_column('queued_at')

    with op.batch_alter_table('agents', schema=None) as batch_op:
        batch_op.drop_column('last_seen_at')
        batch_op.drop_column('presence_changed_at')
        batch_op.drop_column('presence_choice')

    op.drop_table('ticket_cycles')
    with op.batch_alter_table('automation_runs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_automation_runs_ticket_id'))

    op.drop_table('automation_runs')
    op.drop_table('routing_cursors')
    op.drop_table('routing_documents')
