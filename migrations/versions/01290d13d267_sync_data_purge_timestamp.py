"""sync data purge timestamp

Revision ID: 01290d13d267
Revises: 6572b35892f7
Create Date: 2026-11-28 16:07:45.370606
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '01290d13d267'
down_revision = '6572b35892f7'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('syncs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('data_purged_at', sa.DateTime(timezone=True), nullable=True))



def downgrade() -> None:
    with op.batch_alter_table('syncs', schema=None) as batch_op:
        batch_op.drop_column('data_purged_at')

