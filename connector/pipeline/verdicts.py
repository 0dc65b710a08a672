"""Turning ApexVerify export records into verdict columns, and remembering them."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from connector.crm.base import Verdict
from connector.models import VerifiedValue

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
        verified_at=verified_at,
    )


def remember_verdicts(session: Session, type_: str, rows: Iterable[dict[str, Any]]) -> None:
    """Upsert verdicts into `verified_values` (rows carry value, verdict columns, verified_at)."""
    payload = [
        {"type": type_, **{k: r[k] for k in ("value", *INVALID_FORMAT, "details", "verified_at")}}
        for r in rows
    ]
    if not payload:
        return
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = insert(VerifiedValue)
    updated = {c: stmt.excluded[c] for c in (*INVALID_FORMAT, "details", "verified_at")}
    session.execute(stmt.on_conflict_do_update(index_elements=["type", "value"], set_=updated), payload)
