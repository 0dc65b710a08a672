"""the record a contact's flags were written to

A contact merged (HubSpot) or converted (Salesforce) between export and write-back gets its flags
on the record it became: `written_to` names that record (null: the contact's own record).

Revision ID: a1c0ffee0018
Revises: a1c0ffee0017
Create Date: 2026-12-07 21:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = 'a1c0ffee0018'
down_revision = 'a1c0ffee0017'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable and without a default: PostgreSQL adds it without rewriting the table.
    op.add_column('sync_contacts', sa.Column('written_to', sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('sync_contacts') as batch_op:
        batch_op.drop_column('written_to')
