"""segment target country

Revision ID: 7bb51de0fa72
Revises: cc56d347482b
Create Date: 2026-11-28 17:14:42.434867
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '7bb51de0fa72'
down_revision = 'cc56d347482b'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('segments', schema=None) as batch_op:
        batch_op.add_column(sa.Column('target_country', sa.String(length=2), nullable=True))



def downgrade() -> None:
    with op.batch_alter_table('segments', schema=None) as batch_op:
        batch_op.drop_column('target_country')

