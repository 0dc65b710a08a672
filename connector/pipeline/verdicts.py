"""Turning ApexVerify export records into verdict columns, and remembering them."""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import bindparam
from sqlalchemy.orm import Session

from connector.crm.base import Verdict
from connector.db import copy_rows, dialect_insert
from connector.models import SyncValue, VerifiedValue

# A malformed value is neither a role address nor a disposable inbox: every flag gets written.
INVALID_FORMAT = {
    "status": "invalid_format",
    "valid": False,
    "wrong": True,
    "unknown": False,
    "is_role": False,
    "is_disposable": False,
}


def verdict_columns(type_: str, record: dict[str, Any]) -> dict[str, Any]:
    """The columns stored for one export record (email or phone)."""
    valid, wrong, unknown = bool(record.get("valid")), bool(record.get("wrong")), bool(record.get("unknown"))
    if record.get("is_syntax_error"):
        status = "invalid_format"
    elif valid:
        status = "valid"
    elif wrong:
        status = "wrong"
    else:
        status = "unknown"
    is_email = type_ == "email"
    return {
        "status": status,
        "valid": valid,
        "wrong": wrong or status == "invalid_format",
        "unknown": unknown,
        "is_role": bool(record.get("is_role")) if is_email else None,
        "is_disposable": bool(record.get("is_disposable")) if is_email else None,
    }


def verdict_from_row(row: Any, verified_at: datetime) -> Verdict:
    return Verdict(
        status=row.status,
        valid=bool(row.valid),
        wrong=bool(row.wrong),
        unknown=bool(row.unknown),
        is_role=row.is_role,
        is_disposable=row.is_disposable,
        verified_at=verified_at if verified_at.tzinfo else verified_at.replace(tzinfo=UTC),
    )


def remember_verdicts(session: Session, type_: str, rows: Iterable[dict[str, Any]]) -> None:
    """Upsert verdicts into `verified_values` (rows carry value, verdict columns, verified_at)."""
    payload = [
        {"type": type_, **{k: r[k] for k in ("value", *INVALID_FORMAT, "details", "verified_at")}}
        for r in rows
    ]
    if not payload:
        return
    stmt = dialect_insert(session, VerifiedValue)
    updated = {c: stmt.excluded[c] for c in VERDICT_COLUMNS}
    session.execute(stmt.on_conflict_do_update(index_elements=["type", "value"], set_=updated), payload)


VERDICT_COLUMNS = (*INVALID_FORMAT, "details", "verified_at")


def store_verdicts(session: Session, sync_id: int, type_: str, rows: list[dict[str, Any]]) -> None:
    """Put export verdicts on the sync's value rows and remember them for later syncs."""
    if session.get_bind().dialect.name == "postgresql":
        _store_with_copy(session, sync_id, type_, rows)
        return
    table = SyncValue.__table__
    statement = (
        table.update()
        .where(table.c.sync_id == sync_id, table.c.value == bindparam("b_value"))
        .values({c: bindparam(f"b_{c}") for c in VERDICT_COLUMNS})
    )
    session.execute(statement, [{f"b_{k}": v for k, v in row.items()} for row in rows])
    remember_verdicts(session, type_, rows)


_INCOMING = (
    "CREATE TEMP TABLE IF NOT EXISTS incoming_verdicts (value text, status text, valid bool, wrong bool,"
    " unknown bool, is_role bool, is_disposable bool, details json, verified_at timestamptz)"
    " ON COMMIT DELETE ROWS"
)
_SET_VALUES = ", ".join(f"{c} = i.{c}" for c in VERDICT_COLUMNS)
_SET_REMEMBERED = ", ".join(f"{c} = excluded.{c}" for c in VERDICT_COLUMNS)
_COLUMN_LIST = ", ".join(VERDICT_COLUMNS)


def _store_with_copy(session: Session, sync_id: int, type_: str, rows: list[dict[str, Any]]) -> None:
    """PostgreSQL: COPY the chunk into a temp table and update from it — one round trip, not one per row."""
    connection = session.connection()
    connection.exec_driver_sql(_INCOMING)
    copy_rows(
        session,
        "incoming_verdicts",
        ("value", *VERDICT_COLUMNS),
        (
            (row["value"], *(row[c] for c in INVALID_FORMAT), json.dumps(row["details"]), row["verified_at"])
            for row in rows
        ),
    )
    connection.exec_driver_sql(
        f"UPDATE sync_values v SET {_SET_VALUES} FROM incoming_verdicts i WHERE v.sync_id = %(sync_id)s"
        " AND v.value = i.value",
        {"sync_id": sync_id},
    )
    connection.exec_driver_sql(
        f"INSERT INTO verified_values (type, value, {_COLUMN_LIST})"
        f" SELECT DISTINCT ON (value) %(type)s, value, {_COLUMN_LIST} FROM incoming_verdicts"
        f" ON CONFLICT (type, value) DO UPDATE SET {_SET_REMEMBERED}",
        {"type": type_},
    )
    connection.exec_driver_sql("TRUNCATE incoming_verdicts")
