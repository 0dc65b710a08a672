"""per-contact tables without foreign keys

`sync_contacts.sync_id`, `sync_values.sync_id` and `record_verifications.connection_id` lose their
foreign keys. PostgreSQL checks a foreign key by one query per inserted row: inserting a sync's
962,643 value rows took 17.2 s, of which 6.1 s in that check (EXPLAIN ANALYZE, 2-core machine), and
the contacts' COPY and the record digests paid as much again. Nothing relied on them: these rows
are written only by a step holding its sync's lease, syncs and connections are never deleted, and
retention deletes a sync's rows itself (connector.models, the note above SyncValue).

Revision ID: a1c0ffee0016
Revises: a1c0ffee0015
Create Date: 2026-12-07 16:00:00
"""

from __future__ import annotations

from alembic import op


revision = 'a1c0ffee0016'
down_revision = 'a1c0ffee0015'
branch_labels = None
depends_on = None

# SQLite reflects its foreign keys without a name; batch mode names them by this convention.
NAMING = {'fk': '%(table_name)s_%(column_0_name)s_fkey'}
FOREIGN_KEYS = (
    ('sync_contacts', 'sync_id', 'syncs', 'CASCADE'),
    ('sync_values', 'sync_id', 'syncs', 'CASCADE'),
    ('record_verifications', 'connection_id', 'connections', None),
)


def upgrade() -> None:
    for table, column, _, _ in FOREIGN_KEYS:
        with op.batch_alter_table(table, naming_convention=NAMING) as batch_op:
            batch_op.drop_constraint(f'{table}_{column}_fkey', type_='foreignkey')


def downgrade() -> None:
    for table, column, referred, ondelete in FOREIGN_KEYS:
        with op.batch_alter_table(table, naming_convention=NAMING) as batch_op:
            batch_op.create_foreign_key(
                f'{table}_{column}_fkey', referred, [column], ['id'], ondelete=ondelete
            )
