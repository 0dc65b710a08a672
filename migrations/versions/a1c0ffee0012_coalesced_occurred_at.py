"""coalesced contacts remember when their value was observed (occurred_at)

Revision ID: a1c0ffee0012
Revises: a1c0ffee0011
Create Date: 2026-12-04 15:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = 'a1c0ffee0012'
down_revision = 'a1c0ffee0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable: contacts already waiting have no observation time and count as received_at.
    with op.batch_alter_table('coalesced_contacts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('occurred_at', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('coalesced_contacts', schema=None) as batch_op:
        batch_op.drop_column('occurred_at')
