"""coalescing buffer and connection settings

Revision ID: 6572b35892f7
Revises: defc72e73e78
Create Date: 2026-11-28 16:02:40.790519
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '6572b35892f7'
down_revision = 'defc72e73e78'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('coalesced_contacts',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('connection_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('type', sa.String(length=10), nullable=False),
    sa.Column('record_id', sa.String(length=64), nullable=False),
    sa.Column('object_type', sa.String(length=20), nullable=False),
    sa.Column('value', sa.Text(), nullable=True),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('sync_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.ForeignKeyConstraint(['connection_id'], ['connections.id'], ),
    sa.ForeignKeyConstraint(['sync_id'], ['syncs.id'], ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('coalesced_contacts', schema=None) as batch_op:
        batch_op.create_index('ix_coalesced_contacts_buffer', ['connection_id', 'type', 'sync_id', 'id'], unique=False)
        batch_op.create_index('uq_coalesced_contacts_waiting', ['connection_id', 'type', 'object_type', 'record_id'], unique=True, postgresql_where=sa.text('sync_id IS NULL'), sqlite_where=sa.text('sync_id IS NULL'))

    with op.batch_alter_table('connections', schema=None) as batch_op:
        batch_op.alter_column('field_map', new_column_name='settings')



def downgrade() -> None:
    with op.batch_alter_table('connections', schema=None) as batch_op:
        batch_op.alter_column('settings', new_column_name='field_map')

    with op.batch_alter_table('coalesced_contacts', schema=None) as batch_op:
        batch_op.drop_index('uq_coalesced_contacts_waiting', postgresql_where=sa.text('sync_id IS NULL'), sqlite_where=sa.text('sync_id IS NULL'))
        batch_op.drop_index('ix_coalesced_contacts_buffer')

    op.drop_table('coalesced_contacts')
