"""record hashes are HMACs with a server key; personal data expiry

A `server_secrets` table holds the record hash key (inserted by the first process that needs it),
`record_verifications.value_digest` widens from an MD5's 32 hex characters to an HMAC-SHA256's 64
(existing MD5 rows stay and still match until they are rewritten), and `webhook_events` gets an
index on `received_at` for the hourly purge of keys older than the CRMs' redelivery window.

Revision ID: a1c0ffee0013
Revises: a1c0ffee0012
Create Date: 2026-12-04 15:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = 'a1c0ffee0013'
down_revision = 'a1c0ffee0012'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'server_secrets',
        sa.Column('name', sa.String(length=60), nullable=False),
        sa.Column('value', sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint('name'),
    )
    with op.batch_alter_table('record_verifications', schema=None) as batch_op:
        batch_op.alter_column(
            'value_digest', existing_type=sa.String(length=32), type_=sa.String(length=64), existing_nullable=False
        )
    with op.batch_alter_table('webhook_events', schema=None) as batch_op:
        batch_op.create_index('ix_webhook_events_received_at', ['received_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('webhook_events', schema=None) as batch_op:
        batch_op.drop_index('ix_webhook_events_received_at')
    # The older code compares MD5s only: an HMAC row means nothing to it (that record is verified again).
    op.execute("DELETE FROM record_verifications WHERE length(value_digest) > 32")
    with op.batch_alter_table('record_verifications', schema=None) as batch_op:
        batch_op.alter_column(
            'value_digest', existing_type=sa.String(length=64), type_=sa.String(length=32), existing_nullable=False
        )
    op.drop_table('server_secrets')
