"""connections installed by OAuth: auth, status, last error, encrypted tokens, webhook secret digest

Existing rows are the env connections (credentials in the environment), connected.

Revision ID: a1c0ffee0014
Revises: a1c0ffee0013
Create Date: 2026-12-07 09:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = 'a1c0ffee0014'
down_revision = 'a1c0ffee0013'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('connections') as batch:
        batch.add_column(sa.Column('auth', sa.String(length=10), server_default='env', nullable=False))
        batch.add_column(sa.Column('status', sa.String(length=20), server_default='connected', nullable=False))
        batch.add_column(sa.Column('last_error', sa.Text(), nullable=True))
        batch.add_column(sa.Column('credentials', sa.Text(), nullable=True))
        batch.add_column(sa.Column('webhook_secret_digest', sa.String(length=64), nullable=True))
        batch.add_column(sa.Column('updated_at', sa.DateTime(timezone=True), nullable=True))
        batch.create_unique_constraint('uq_connections_webhook_secret_digest', ['webhook_secret_digest'])
    op.execute("UPDATE connections SET updated_at = created_at")
    with op.batch_alter_table('connections') as batch:
        batch.alter_column('updated_at', existing_type=sa.DateTime(timezone=True), nullable=False)


def downgrade() -> None:
    with op.batch_alter_table('connections') as batch:
        batch.drop_constraint('uq_connections_webhook_secret_digest', type_='unique')
        for column in ('updated_at', 'webhook_secret_digest', 'credentials', 'last_error', 'status', 'auth'):
            batch.drop_column(column)
