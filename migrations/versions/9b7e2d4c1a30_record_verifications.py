"""record verifications: which value each CRM record's flags were written for

Revision ID: 9b7e2d4c1a30
Revises: 3f1c0a9e5b21
Create Date: 2026-12-04 00:15:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '9b7e2d4c1a30'
down_revision = '3f1c0a9e5b21'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'record_verifications',
        sa.Column('connection_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
        sa.Column('type', sa.String(length=10), nullable=False),
        sa.Column('record_id', sa.String(length=64), nullable=False),
        sa.Column('value_digest', sa.String(length=32), nullable=False),
        sa.Column('written_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['connection_id'], ['connections.id']),
        sa.PrimaryKeyConstraint('connection_id', 'type', 'record_id'),
    )


def downgrade() -> None:
    op.drop_table('record_verifications')
