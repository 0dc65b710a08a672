"""Per-sync counters, recomputed from the contact and value rows at each transition."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from connector.crm.base import CONVERTED_TO, MERGED_INTO
from connector.models import Sync, SyncBatch, SyncContact, SyncValue
from connector.pipeline.actions import action_counts

SKIP_REASONS_ALWAYS_COUNTED = ("no_value", "recently_verified", "deleted")


def refresh_counts(session: Session, sync: Sync) -> None:
    sync.counts = compute_counts(session, sync.id)


def compute_counts(session: Session, sync_id: int) -> dict[str, Any]:
    outcomes: dict[str, int] = {}
    # The reasons DESIGN.md names are always there, 0 when none: a client reads them without a default.
    skipped: dict[str, int] = dict.fromkeys(SKIP_REASONS_ALWAYS_COUNTED, 0)
    verified: dict[str, int] = {}  # written, for a reason: onto the contact a record was merged into
    rows = session.execute(
        select(SyncContact.outcome, SyncContact.reason, func.count())
        .where(SyncContact.sync_id == sync_id)
        .group_by(SyncContact.outcome, SyncContact.reason)
    )
    for outcome, reason, count in rows:
        outcomes[outcome] = outcomes.get(outcome, 0) + count
        if outcome == "skipped":
            skipped[reason or "unspecified"] = skipped.get(reason or "unspecified", 0) + count
        elif outcome == "verified" and reason in (MERGED_INTO, CONVERTED_TO):
            verified[reason] = verified.get(reason, 0) + count
    verdicts: dict[str, int] = {}
    values = from_cache = roles = disposables = 0
    # One pass over the value rows (three before: 0.6 s of a 1,000,000-value sync's counting).
    for status, count, cached, role, disposable in session.execute(
        select(
            SyncValue.status,
            func.count(),
            func.count().filter(SyncValue.from_cache),
            func.count().filter(SyncValue.is_role.is_(True)),
            func.count().filter(SyncValue.is_disposable.is_(True)),
        )
        .where(SyncValue.sync_id == sync_id)
        .group_by(SyncValue.status)
    ):
        if status is not None:
            verdicts[status] = count
        values, from_cache = values + count, from_cache + cached
        roles, disposables = roles + role, disposables + disposable
    sent = session.scalar(
        select(func.coalesce(func.sum(SyncBatch.rows), 0)).where(SyncBatch.sync_id == sync_id)
    )
    actions, actions_failed = action_counts(session, sync_id)
    return {
        "contacts": sum(outcomes.values()),
        "pending": outcomes.get("pending", 0),
        "verified": outcomes.get("verified", 0),
        "skipped": sum(skipped.values()),
        "skipped_by_reason": skipped,
        # Verified contacts whose flags went onto the record they became (merged_into, converted_to).
        "verified_by_reason": verified,
        "write_failed": outcomes.get("write_failed", 0),
        "values": values,
        "values_sent": int(sent or 0),
        "values_from_cache": from_cache,
        "verdicts": verdicts,
        "flags": {"is_role": roles, "is_disposable": disposables},
        # Verdict actions taken per `do` (connector.pipeline.actions), and those the CRM refused.
        "actions": actions,
        "actions_failed": actions_failed,
    }
