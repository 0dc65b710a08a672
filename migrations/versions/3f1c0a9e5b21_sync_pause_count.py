"""sync pause count: consecutive pauses drive the outage backoff

Revision ID: 3f1c0a9e5b21
Revises: 7bb51de0fa72
Create Date: 2026-12-03 23:55:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '3f1c0a9e5b21'
down_revision = '7bb51de0fa72'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('syncs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('pause_count', sa.Integer(), server_default='0', nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('syncs', schema=None) as batch_op:
        batch_op.drop_column('pause_count')
