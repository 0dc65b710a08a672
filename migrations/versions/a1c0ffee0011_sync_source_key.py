"""one unsettled sync per source (source_key + partial unique index)

Revision ID: a1c0ffee0011
Revises: 5d2a8c61f0b7
Create Date: 2026-12-04 15:40:00

Existing unsettled syncs of a CRM segment get their key; when two of them already read the same
source, the newest keeps it and the others keep running unkeyed, so the index can be built. Keys
are computed by a frozen copy of connector.pipeline.syncs.source_key: a migration must build the
same rows whatever the code later becomes.
"""

from __future__ import annotations

import hashlib
from typing import Any

import sqlalchemy as sa
from alembic import op


revision = 'a1c0ffee0011'
down_revision = '5d2a8c61f0b7'
branch_labels = None
depends_on = None

UNSETTLED = sa.text(
    "status IN ('awaiting_approval', 'configuring', 'exporting', 'fetching_results', 'launching', "
    "'parsing', 'pending', 'ready', 'uploading', 'verifying', 'writing_back')"
)
SYNCS = sa.table(
    'syncs',
    sa.column('id', sa.Integer()),
    sa.column('connection_id', sa.Integer()),
    sa.column('source', sa.JSON()),
    sa.column('type', sa.String()),
    sa.column('status', sa.String()),
    sa.column('source_key', sa.String()),
)


def upgrade() -> None:
    with op.batch_alter_table('syncs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('source_key', sa.String(length=200), nullable=True))
    _backfill(op.get_bind())
    with op.batch_alter_table('syncs', schema=None) as batch_op:
        batch_op.create_index('uq_syncs_unsettled_source', ['source_key'], unique=True,
                              postgresql_where=UNSETTLED, sqlite_where=UNSETTLED)  # fmt: skip


def downgrade() -> None:
    with op.batch_alter_table('syncs', schema=None) as batch_op:
        batch_op.drop_index('uq_syncs_unsettled_source', postgresql_where=UNSETTLED, sqlite_where=UNSETTLED)
        batch_op.drop_column('source_key')


def _backfill(bind: sa.Connection) -> None:
    rows = bind.execute(
        sa.select(SYNCS.c.id, SYNCS.c.connection_id, SYNCS.c.source, SYNCS.c.type)
        .where(UNSETTLED)
        .order_by(SYNCS.c.id.desc())
    )
    taken: set[str] = set()
    for sync_id, connection_id, source, type_ in rows.all():
        key = _source_key(connection_id, source or {}, type_)
        if key is None or key in taken:
            continue  # a file or coalesced sync, or an older twin of a keyed one
        taken.add(key)
        bind.execute(sa.update(SYNCS).where(SYNCS.c.id == sync_id).values(source_key=key))


def _source_key(connection_id: int, source: dict[str, Any], type_: str) -> str | None:
    ref = source.get('ref')
    if not ref:
        return None
    ref = str(ref)
    kind = str(source.get('kind'))
    if kind == 'salesforce_campaign' and len(ref) == 18:
        ref = ref[:15]
    head = f"{connection_id}|{kind}|{source.get('object') or ''}|{type_}|"
    if len(head) + len(ref) > 200:
        ref = 'sha256:' + hashlib.sha256(ref.encode()).hexdigest()
    return head + ref
