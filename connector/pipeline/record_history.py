"""Which value each CRM record's flags were written for, so "recently verified" means the same value.

A segment's export carries the record's own verification timestamp (`apexverify_verified_at`),
which lets a scheduled sync skip records flagged within `reverify_after_days` without writing to
the CRM again. The timestamp alone is not enough: a record whose email changed since keeps the
old email's flags. After each write-back page the connector remembers, per record, a digest of
the value it wrote flags for (no email or phone is kept here), and at export a record is only
skipped when its current value has that digest.

The digest is HMAC-SHA256 under the server's record hash key (connector.server_secrets), not a
bare hash: E.164 phone numbers are few enough to recover from an unkeyed MD5 by trying them all
in seconds. The database computes it (PostgreSQL 11+ from its built-in sha256(), no extension;
SQLite through a function the runtime registers), so a page of 250,000 records is still one
statement: hashing 250,000 phone numbers and counting the distinct digests took 0.41 s against
MD5's 0.25 s (PostgreSQL 15 on this 2-core machine).

Rows written before the key existed hold an MD5 (32 hex characters). Such a digest still counts
as a match until the record's next write-back rewrites it as an HMAC, so the upgrade makes no
record look changed and spends no credits; the purge deletes the rest once they are older than
every reverify window (connector.pipeline.retention).
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

from sqlalchemy import (
    CTE,
    BigInteger,
    ColumnElement,
    DateTime,
    LargeBinary,
    Select,
    SQLColumnExpression,
    String,
    and_,
    exists,
    func,
    literal,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.orm import Session

from connector.db import affected_rows, dialect_insert, inserted_without_upsert
from connector.models import ContactOutcome, RecordVerification, Sync, SyncContact, utcnow
from connector.runtime import Runtime
from connector.server_secrets import RECORD_HASH_KEY, server_secret

SHA256_BLOCK_BYTES = 64


def record_hash_key(runtime: Runtime) -> bytes:
    """The key of every record digest: one per installation, the same in every process, never changed."""
    return server_secret(runtime, RECORD_HASH_KEY)


def value_digest(session: Session, key: bytes, value: SQLColumnExpression[str | None]) -> ColumnElement[str]:
    """HMAC-SHA256(key, UTF-8 of `value`) in hex, computed by the database (the same as Python's hmac)."""
    if session.get_bind().dialect.name != "postgresql":
        return func.hmac_sha256(literal(key, LargeBinary), value, type_=String)
    inner, outer = _hmac_pads(key)
    message = literal(inner, LargeBinary).op("||")(func.convert_to(value, "UTF8"))
    outer_message = literal(outer, LargeBinary).op("||")(func.sha256(message, type_=LargeBinary))
    return func.encode(func.sha256(outer_message, type_=LargeBinary), "hex", type_=String)


def _hmac_pads(key: bytes) -> tuple[bytes, bytes]:
    """RFC 2104's padded keys (K xor ipad, K xor opad): HMAC = H(K xor opad || H(K xor ipad || message))."""
    if len(key) > SHA256_BLOCK_BYTES:
        key = hashlib.sha256(key).digest()
    key = key.ljust(SHA256_BLOCK_BYTES, b"\0")
    return bytes(b ^ 0x36 for b in key), bytes(b ^ 0x5C for b in key)


def reverify_changed_values(session: Session, sync: Sync, key: bytes) -> int:
    """Put back to pending the records skipped as recently verified whose value changed since."""
    written = RecordVerification.value_digest
    same_value_written = exists().where(
        RecordVerification.connection_id == sync.connection_id,
        RecordVerification.type == sync.type,
        RecordVerification.record_id == SyncContact.record_id,
        # A legacy MD5 row matches until its record's next write-back makes it an HMAC.
        or_(written == value_digest(session, key, SyncContact.value), written == func.md5(SyncContact.value)),
    )
    return affected_rows(
        session.execute(
            update(SyncContact)
            .where(
                SyncContact.sync_id == sync.id,
                SyncContact.reason == "recently_verified",
                ~same_value_written,
            )
            .values(outcome=ContactOutcome.PENDING, reason=None)
        )
    )


def remember_written_values(session: Session, sync: Sync, key: bytes, after_id: int, last_id: int) -> None:
    """Record the digest of the value each record of a written id range now carries flags for.

    On PostgreSQL the records already known are updated and the others inserted by one statement
    (an UPDATE ... RETURNING in a WITH, then a plain INSERT; connector.db.inserted_without_upsert);
    the upsert does the work on SQLite or when another sync inserted one of the records meanwhile.
    """
    if sync.crm == "file":
        return
    written = _written_digests(session, sync, key, after_id, last_id)
    now = utcnow()
    if inserted_without_upsert(session, lambda: session.execute(_update_then_insert(sync, written, now))):
        return
    statement = dialect_insert(session, RecordVerification.__table__).from_select(
        _COLUMNS,
        _rows(sync, written, now).where(true()),  # SQLite reads "FROM x ON CONFLICT" as a join
    )
    latest = {"value_digest": statement.excluded.value_digest, "written_at": statement.excluded.written_at}
    session.execute(
        statement.on_conflict_do_update(index_elements=["connection_id", "type", "record_id"], set_=latest)
    )


_COLUMNS = ["connection_id", "type", "record_id", "value_digest", "written_at"]


def _written_digests(session: Session, sync: Sync, key: bytes, after_id: int, last_id: int) -> CTE:
    """(record_id, value_digest) of the range's written records, one row per record."""
    # The record the flags went onto: a merged contact's survivor, a converted lead's contact.
    written_record = func.coalesce(SyncContact.written_to, SyncContact.record_id)
    return (
        select(
            written_record.label("record_id"),
            func.max(value_digest(session, key, SyncContact.value)).label("value_digest"),
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
        .group_by(written_record)  # one row per record: an upsert may not touch a row twice
        .cte("written")
    )


def _rows(sync: Sync, written: CTE, now: datetime) -> Select[Any]:
    """The new rows, in key order: the primary key's leaves fill one after the other."""
    return select(
        literal(sync.connection_id, BigInteger),
        literal(sync.type, String),
        written.c.record_id,
        written.c.value_digest,
        literal(now, DateTime(timezone=True)),
    ).order_by(written.c.record_id)


def _update_then_insert(sync: Sync, written: CTE, now: datetime) -> Any:
    known = RecordVerification.__table__
    updated = (
        update(known)
        .where(
            known.c.connection_id == sync.connection_id,
            known.c.type == sync.type,
            known.c.record_id == written.c.record_id,
        )
        .values(value_digest=written.c.value_digest, written_at=now)
        .returning(known.c.record_id)
        .cte("updated")
    )
    new = _rows(sync, written, now).where(~exists().where(updated.c.record_id == written.c.record_id))
    return known.insert().from_select(_COLUMNS, new).add_cte(written).add_cte(updated)
