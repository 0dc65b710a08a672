"""abandoned batches

Revision ID: cc56d347482b
Revises: 01290d13d267
Create Date: 2026-11-28 16:41:07.970768
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = 'cc56d347482b'
down_revision = '01290d13d267'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('sync_batches', schema=None) as batch_op:
        batch_op.add_column(sa.Column('abandoned_at', sa.DateTime(timezone=True), nullable=True))



def downgrade() -> None:
    with op.batch_alter_table('sync_batches', schema=None) as batch_op:
        batch_op.drop_column('abandoned_at')

