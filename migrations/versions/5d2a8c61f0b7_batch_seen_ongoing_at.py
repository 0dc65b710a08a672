"""batch seen_ongoing_at: with done_at it brackets when a batch really finished verifying

Revision ID: 5d2a8c61f0b7
Revises: 9b7e2d4c1a30
Create Date: 2026-12-04 03:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '5d2a8c61f0b7'
down_revision = '9b7e2d4c1a30'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('sync_batches', schema=None) as batch_op:
        batch_op.add_column(sa.Column('seen_ongoing_at', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('sync_batches', schema=None) as batch_op:
        batch_op.drop_column('seen_ongoing_at')
