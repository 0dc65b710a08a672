"""verdict actions, alerts and plans

Segments and syncs carry their verdict actions; a sync may be asked as a plan (it stops before
launch with `plan`); `sync_actions` records each action taken per contact, `alerts` each alert
raised and its delivery per target; `paused_since` dates the current run of pauses.

Revision ID: a1c0ffee0017
Revises: a1c0ffee0016
Create Date: 2026-12-07 18:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = 'a1c0ffee0017'
down_revision = 'a1c0ffee0016'
branch_labels = None
depends_on = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def upgrade() -> None:
    op.add_column('segments', sa.Column('actions', sa.JSON(), server_default='[]', nullable=False))
    with op.batch_alter_table('syncs') as batch_op:
        batch_op.add_column(sa.Column('actions', sa.JSON(), server_default='[]', nullable=False))
        batch_op.add_column(sa.Column('plan_requested', sa.Boolean(), server_default='false', nullable=False))
        batch_op.add_column(sa.Column('plan', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('paused_since', sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        'sync_actions',
        sa.Column('id', BIG_ID, primary_key=True),
        sa.Column('sync_id', BIG_ID, nullable=False),
        sa.Column('contact_id', BIG_ID, nullable=False),
        sa.Column('action', sa.String(120), nullable=False),
        sa.Column('do', sa.String(30), nullable=False),
        sa.Column('outcome', sa.String(20), nullable=False),
        sa.Column('error_message', sa.Text(), nullable=True),
        sa.UniqueConstraint('sync_id', 'action', 'contact_id', name='uq_sync_actions_sync_action_contact'),
    )
    op.create_index('ix_sync_actions_sync_id', 'sync_actions', ['sync_id', 'id'])
    op.create_table(
        'alerts',
        sa.Column('id', BIG_ID, primary_key=True),
        sa.Column('kind', sa.String(40), nullable=False),
        sa.Column('subject', sa.String(120), nullable=False),
        sa.Column('sync_id', BIG_ID, nullable=True),
        sa.Column('connection_id', BIG_ID, nullable=True),
        sa.Column('payload', sa.JSON(), nullable=False),
        sa.Column('deliveries', sa.JSON(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('next_attempt_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('delivered_at', sa.DateTime(timezone=True), nullable=True),
        sa.UniqueConstraint('kind', 'subject', name='uq_alerts_kind_subject'),
    )
    op.create_index('ix_alerts_next_attempt_at', 'alerts', ['next_attempt_at'])


def downgrade() -> None:
    op.drop_index('ix_alerts_next_attempt_at', table_name='alerts')
    op.drop_table('alerts')
    op.drop_index('ix_sync_actions_sync_id', table_name='sync_actions')
    op.drop_table('sync_actions')
    with op.batch_alter_table('syncs') as batch_op:
        batch_op.drop_column('paused_since')
        batch_op.drop_column('plan')
        batch_op.drop_column('plan_requested')
        batch_op.drop_column('actions')
    with op.batch_alter_table('segments') as batch_op:
        batch_op.drop_column('actions')
