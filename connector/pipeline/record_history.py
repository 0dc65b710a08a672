"""Which value each CRM record's flags were written for, so "recently verified" means the same value.

A segment's export carries the record's own verification timestamp (`apexverify_verified_at`),
which lets a scheduled sync skip records flagged within `reverify_after_days` without writing to
the CRM again. The timestamp alone is not enough: a record whose email changed since keeps the
old email's flags. After each write-back page the connector remembers, per record, an MD5 of the
value it wrote flags for (a digest: no email or phone is kept here), and at export a record is
only skipped when its current value has that digest.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, DateTime, String, and_, exists, func, literal, select, true, update
from sqlalchemy.orm import Session

from connector.db import dialect_insert
from connector.models import ContactOutcome, RecordVerification, Sync, SyncContact, utcnow


def reverify_changed_values(session: Session, sync: Sync) -> int:
    """Put back to pending the records skipped as recently verified whose value changed since."""
    same_value_written = exists().where(
        RecordVerification.connection_id == sync.connection_id,
        RecordVerification.type == sync.type,
        RecordVerification.record_id == SyncContact.record_id,
        RecordVerification.value_digest == func.md5(SyncContact.value),
    )
    return session.execute(
        update(SyncContact)
        .where(
            SyncContact.sync_id == sync.id,
            SyncContact.reason == "recently_verified",
            ~same_value_written,
        )
        .values(outcome=ContactOutcome.PENDING, reason=None)
    ).rowcount


def remember_written_values(session: Session, sync: Sync, after_id: int, last_id: int) -> None:
    """Record the digest of the value each record of a written id range now carries flags for."""
    if sync.crm == "file":
        return
    written = (
        select(
            func.max(func.md5(SyncContact.value)).label("value_digest"),
            SyncContact.record_id,
        )
        .where(
            and_(
                SyncContact.sync_id == sync.id,
                SyncContact.id > after_id,
                SyncContact.id <= last_id,
                SyncContact.outcome == ContactOutcome.VERIFIED,
                SyncContact.value.is_not(None),
            )
        )
        .group_by(SyncContact.record_id)  # one row per record: an upsert may not touch a row twice
        .subquery()
    )
    columns = select(
        literal(sync.connection_id, BigInteger),
        literal(sync.type, String),
        written.c.record_id,
        written.c.value_digest,
        literal(utcnow(), DateTime(timezone=True)),
    ).where(true())  # SQLite reads "FROM x ON CONFLICT" as a join without a WHERE in between
    statement = dialect_insert(session, RecordVerification.__table__).from_select(
        ["connection_id", "type", "record_id", "value_digest", "written_at"], columns
    )
    latest = {"value_digest": statement.excluded.value_digest, "written_at": statement.excluded.written_at}
    session.execute(
        statement.on_conflict_do_update(index_elements=["connection_id", "type", "record_id"], set_=latest)
    )
