"""Turning ApexVerify export records into verdict columns, and remembering them."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import bindparam, text
from sqlalchemy.orm import Session

from connector.crm.base import Verdict
from connector.db import copy_rows, inserted_without_upsert, raise_work_mem
from connector.models import SyncValue

# A malformed value is neither a role address nor a disposable inbox: every flag gets written.
INVALID_FORMAT = {
    "status": "invalid_format",
    "valid": False,
    "wrong": True,
    "unknown": False,
    "is_role": False,
    "is_disposable": False,
}


def verdict_columns(type_: str, record: dict[str, Any]) -> tuple[Any, ...]:
    """The verdict of one export record (email or phone), as the values of VERDICT_FIELDS."""
    get = record.get
    valid, wrong = bool(get("valid")), bool(get("wrong"))
    if get("is_syntax_error"):
        status = "invalid_format"
    elif valid:
        status = "valid"
    elif wrong:
        status = "wrong"
    else:
        status = "unknown"
    if type_ != "email":
        return status, valid, wrong or status == "invalid_format", bool(get("unknown")), None, None
    return (
        status,
        valid,
        wrong or status == "invalid_format",
        bool(get("unknown")),
        bool(get("is_role")),
        bool(get("is_disposable")),
    )


def verdict_from_text(fields: Sequence[str | None]) -> Verdict:
    """The Verdict of VERDICT_FIELDS + verified_at as text (connector.db.text_rows)."""
    status, valid, wrong, unknown, is_role, is_disposable, verified_at = fields
    moment = datetime.fromisoformat(verified_at or "")
    return Verdict(
        status=status or "",
        valid=valid == "t",
        wrong=wrong == "t",
        unknown=unknown == "t",
        is_role=None if is_role is None else is_role == "t",
        is_disposable=None if is_disposable is None else is_disposable == "t",
        verified_at=moment if moment.tzinfo else moment.replace(tzinfo=UTC),
    )


VERDICT_FIELDS = tuple(INVALID_FORMAT)


def store_verdicts(
    session: Session,
    sync_id: int,
    batch_seq: int,
    type_: str,
    rows: Iterable[tuple[Any, ...]],
    verified_at: datetime,
) -> None:
    """Put a batch's export verdicts ((value, *VERDICT_FIELDS) rows) on its value rows, and
    remember them for later syncs: the rows go into a staging table (COPY on PostgreSQL), then one
    UPDATE joined to it and one upsert of the cache, not a statement per value."""
    raise_work_mem(session)
    connection = session.connection()
    dialect = connection.dialect.name
    connection.exec_driver_sql(_STAGING[dialect])
    if dialect == "postgresql":
        copy_rows(session, "incoming_verdicts", ("value", *VERDICT_FIELDS), rows)
        connection.exec_driver_sql("ANALYZE incoming_verdicts")  # a temp table has no statistics otherwise
    else:
        connection.exec_driver_sql("DELETE FROM incoming_verdicts")
        staged = list(rows)
        if staged:  # an export can hold no record (every value dropped as malformed)
            connection.exec_driver_sql("INSERT INTO incoming_verdicts VALUES (?, ?, ?, ?, ?, ?, ?)", staged)
    moment = bindparam("verified_at", verified_at, type_=SyncValue.__table__.c.verified_at.type)
    session.execute(text(_SET_VERDICTS).bindparams(moment, sync_id=sync_id, batch_seq=batch_seq))

    def remember_known_then_new() -> None:
        for statement in _REMEMBER_KNOWN_THEN_NEW:
            session.execute(text(statement).bindparams(moment, type=type_))

    if inserted_without_upsert(session, remember_known_then_new):
        return
    session.execute(text(_REMEMBER[dialect]).bindparams(moment, type=type_))


_STAGING_COLUMNS = (
    "value text, status text, valid boolean, wrong boolean, unknown boolean, is_role boolean,"
    " is_disposable boolean"
)
_STAGING = {  # rows live for the transaction (SQLite has no ON COMMIT: emptied before use)
    "postgresql": f"CREATE TEMP TABLE incoming_verdicts ({_STAGING_COLUMNS}) ON COMMIT DROP",
    "sqlite": f"CREATE TEMP TABLE IF NOT EXISTS incoming_verdicts ({_STAGING_COLUMNS})",
}
_FIELD_LIST = ", ".join(VERDICT_FIELDS)
_SET_VERDICTS = (
    "UPDATE sync_values AS v SET {}, verified_at = :verified_at FROM incoming_verdicts AS i"
    " WHERE v.sync_id = :sync_id AND v.batch_seq = :batch_seq AND v.value = i.value"
).format(", ".join(f"{c} = i.{c}" for c in VERDICT_FIELDS))
_REMEMBER_KNOWN_THEN_NEW = (
    "UPDATE verified_values AS c SET {}, verified_at = :verified_at FROM incoming_verdicts AS i"
    " WHERE c.type = :type AND c.value = i.value".format(", ".join(f"{f} = i.{f}" for f in VERDICT_FIELDS)),
    f"INSERT INTO verified_values (type, value, {_FIELD_LIST}, verified_at)"
    f" SELECT DISTINCT ON (value) :type, value, {_FIELD_LIST}, :verified_at FROM incoming_verdicts AS i"
    " WHERE NOT EXISTS (SELECT 1 FROM verified_values AS c WHERE c.type = :type AND c.value = i.value)"
    " ORDER BY value",
)
# An export naming a value twice keeps one verdict (ON CONFLICT may touch a row once).
_REMEMBER = {
    dialect: f"INSERT INTO verified_values (type, value, {_FIELD_LIST}, verified_at)"
    f" SELECT {distinct} :type, value, {_FIELD_LIST}, :verified_at FROM incoming_verdicts {group}"
    " ON CONFLICT (type, value) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in (*VERDICT_FIELDS, "verified_at"))
    for dialect, distinct, group in (
        ("postgresql", "DISTINCT ON (value)", ""),
        ("sqlite", "", "WHERE true GROUP BY value"),  # SQLite keeps one row's bare columns per group
    )
}
