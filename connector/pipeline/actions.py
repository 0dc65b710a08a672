"""Verdict actions: what a segment asks done to the records of a verdict once their flags are written.

A segment's `actions` (`[{"when": "wrong", "do": "opt_out"}, {"when": "disposable", "do":
"add_to_list", "list_id": "42"}]`) are checked against what its CRM can do (`Crm.actions`) when
the segment is created or changed, and copied onto each sync it starts, so an edit never changes
a sync already running.

They run at the end of write-back, after every flag is written, for the contacts whose flags were
written (outcome `verified`) and whose verdict the action is for. Idempotent across crashes:

- the due rows are made by one INSERT … SELECT per action over the contact and value rows, under
  a unique key (sync, action, contact), so making them again adds nothing;
- a page of rows is marked `attempted` in a commit before its CRM call and `done` / `failed`
  after it; a step that died in between finds `attempted` rows and asks the CRM which of them it
  already shows acted on (`ActionRunner.already_done`) before calling again, so no member is
  added twice and no address is unsubscribed twice. A worker killed between the flags and the
  actions made no call and leaves only `pending` rows, or none.

A sync without actions runs no statement here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from sqlalchemy import ColumnElement, and_, case, func, literal, or_, select, update
from sqlalchemy.orm import Session

from connector.chaos import chaos_point
from connector.crm.base import (
    VERDICT_CONDITIONS,
    ActionKind,
    ActionRunner,
    ActionTarget,
    Crm,
    VerdictAction,
)
from connector.db import analyze, dialect_insert, forbid_nested_loops
from connector.errors import InputError
from connector.models import ContactOutcome, Sync, SyncAction, SyncContact, SyncValue
from connector.pipeline.state import StepContext

log = logging.getLogger(__name__)

MAX_ACTIONS = 10
PENDING, ATTEMPTED, DONE, FAILED = "pending", "attempted", "done", "failed"

# The value rows each `when` selects, by the verdict written onto the record. `wrong` is the verdict
# `wrong` only: a malformed value (`invalid_format`, also flagged wrong) has its own `when`, since
# no CRM can unsubscribe or reach an address that is not one.
CONDITIONS: dict[str, Callable[[], ColumnElement[bool]]] = {
    "wrong": lambda: SyncValue.status == "wrong",
    "invalid_format": lambda: SyncValue.status == "invalid_format",
    "disposable": lambda: SyncValue.is_disposable.is_(True),
    "role": lambda: SyncValue.is_role.is_(True),
    "unknown": lambda: SyncValue.status == "unknown",
}
if tuple(CONDITIONS) != VERDICT_CONDITIONS:
    raise RuntimeError(f"verdict conditions {VERDICT_CONDITIONS} and their SQL {tuple(CONDITIONS)} disagree")

_ACTION_FIELDS = {"when", "do", "list_id", "campaign_id", "status"}


# --- validation (segment create / PATCH) --------------------------------------------------------


def validate_actions(raw: Any, crm: Crm, type_: str) -> list[dict[str, str]]:
    """A segment's `actions`, checked against its CRM and type; raises InputError (400)."""
    if raw is None:
        return []
    if not isinstance(raw, list) or len(raw) > MAX_ACTIONS:
        raise InputError("invalid_actions", f"actions must be a list of at most {MAX_ACTIONS} objects")
    checked = [_action(item, crm, type_, position) for position, item in enumerate(raw)]
    seen: set[tuple[str, str]] = set()
    for item in checked:
        action = to_verdict_action(item)
        if (action.when, action.key) in seen:
            raise InputError("invalid_actions", f"action {action.do} for {action.when} is listed twice")
        seen.add((action.when, action.key))
    return checked


def _action(item: Any, crm: Crm, type_: str, position: int) -> dict[str, str]:
    where = f"actions[{position}]"
    if not isinstance(item, dict):
        raise InputError("invalid_actions", f"{where} must be an object with `when` and `do`")
    unknown = set(item) - _ACTION_FIELDS
    if unknown:
        raise InputError("invalid_actions", f"{where} has unknown field(s): {', '.join(sorted(unknown))}")
    when = item.get("when")
    if when not in VERDICT_CONDITIONS:
        raise InputError(
            "invalid_action_when", f"{where}.when must be one of {', '.join(VERDICT_CONDITIONS)}"
        )
    kinds = {kind.name: kind for kind in crm.actions}
    kind = kinds.get(item.get("do"))  # type: ignore[arg-type]
    if kind is None:
        offered = ", ".join(kinds) or "none"
        raise InputError("invalid_action_do", f"{where}.do must be one of the {crm.label} actions: {offered}")
    if kind.email_only and type_ != "email":
        raise InputError("invalid_action_do", f"{where}: {kind.name} unsubscribes an email address; "
                         "it is for email segments only")  # fmt: skip
    return {"when": when, "do": kind.name, **_target_fields(item, kind, where)}


def _target_fields(item: dict[str, Any], kind: ActionKind, where: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for name in ("list_id", "campaign_id"):
        if name in item and name != kind.target_field:
            raise InputError("invalid_actions", f"{where}: {kind.name} takes no {name}")
    if kind.target_field:
        target = item.get(kind.target_field)
        if not isinstance(target, str | int) or isinstance(target, bool) or not str(target).strip():
            raise InputError(
                f"missing_{kind.target_field}", f"{where}: {kind.name} needs {kind.target_field}"
            )
        if len(str(target).strip()) > 64:
            raise InputError("invalid_actions", f"{where}.{kind.target_field} is longer than 64 characters")
        fields[kind.target_field] = str(target).strip()
    if "status" in item:
        status = item["status"]
        if not kind.takes_status:
            raise InputError("invalid_actions", f"{where}: {kind.name} takes no status")
        if not isinstance(status, str) or not status.strip() or len(status) > 40:
            raise InputError("invalid_actions", f"{where}.status must be a string of 1 to 40 characters")
        fields["status"] = status.strip()
    return fields


def to_verdict_action(stored: dict[str, str]) -> VerdictAction:
    target = stored.get("list_id") or stored.get("campaign_id")
    return VerdictAction(stored["when"], stored["do"], target, stored.get("status"))


def verdict_actions(sync: Sync) -> list[VerdictAction]:
    return [to_verdict_action(item) for item in sync.actions or []]


# --- planning (how many contacts each action would touch at most) ------------------------------


def actions_at_most(session: Session, sync: Sync) -> dict[str, int]:
    """Per `do`, the contacts still to be written whose value is not verified yet (any verdict may
    come) or already carries a verdict the action is for (a cached one)."""
    by_do: dict[str, list[str]] = {}
    for action in verdict_actions(sync):
        by_do.setdefault(action.do, []).append(action.when)
    if not by_do:
        return {}
    forbid_nested_loops(session)
    return {do: _contacts_matching(session, sync.id, whens, unverified=True) for do, whens in by_do.items()}


def _contacts_matching(session: Session, sync_id: int, whens: Iterable[str], *, unverified: bool) -> int:
    conditions = [CONDITIONS[when]() for when in whens]
    if unverified:
        conditions.append(SyncValue.status.is_(None))
    query = (
        select(func.count(SyncContact.id.distinct()))
        .join(SyncValue, and_(SyncValue.sync_id == SyncContact.sync_id, SyncValue.value == SyncContact.value))
        .where(
            SyncContact.sync_id == sync_id, SyncContact.outcome == ContactOutcome.PENDING, or_(*conditions)
        )
    )
    return int(session.scalar(query) or 0)


# --- running -----------------------------------------------------------------------------------


def record_due_actions(session: Session, sync_id: int, actions: list[VerdictAction]) -> None:
    """One row per (action, contact written with a verdict it is for); a second run adds nothing."""
    forbid_nested_loops(session)
    for action in actions:
        chosen = (
            select(
                SyncContact.sync_id,
                SyncContact.id,
                literal(action.key),
                literal(action.do),
                literal(PENDING),
            )
            .join(
                SyncValue,
                and_(SyncValue.sync_id == SyncContact.sync_id, SyncValue.value == SyncContact.value),
            )
            .where(
                SyncContact.sync_id == sync_id,
                SyncContact.outcome == ContactOutcome.VERIFIED,
                CONDITIONS[action.when](),
            )
        )
        insert = dialect_insert(session, SyncAction).from_select(
            ["sync_id", "contact_id", "action", "do", "outcome"], chosen
        )
        session.execute(insert.on_conflict_do_nothing())


def take_actions(ctx: StepContext, runner: Callable[[int], ActionRunner]) -> None:
    """Run the sync's actions on their due rows, a page at a time; `runner(expected)` makes the CRM's."""
    with ctx.session() as session:
        sync = session.get_one(Sync, ctx.sync_id)
        actions = verdict_actions(sync)
        if not actions:
            return
        record_due_actions(session, sync.id, actions)
    with ctx.session() as session:  # its own transaction: ANALYZE's lock is held until commit
        analyze(session, "sync_actions")
    with ctx.session() as session:
        due = _due_count(session, ctx.sync_id)
    if not due:
        return
    crm_runner = runner(due)
    for action in actions:
        after_id: int | None = 0
        while after_id is not None:
            after_id = _take_page(ctx, crm_runner, action, after_id)


def _due_count(session: Session, sync_id: int) -> int:
    query = select(func.count()).where(
        SyncAction.sync_id == sync_id, SyncAction.outcome.in_((PENDING, ATTEMPTED))
    )
    return int(session.scalar(query) or 0)


def _take_page(ctx: StepContext, runner: ActionRunner, action: VerdictAction, after_id: int) -> int | None:
    """Act on the next page of due rows of `action` after row `after_id`; the page's last row id, or
    None when none is left. (A page leaves no row due: the cursor spares the next page's query the
    rows already done, which it would otherwise step over again and again.)"""
    with ctx.session() as session:
        ctx.renew_lease(session)
        rows = session.execute(
            select(
                SyncAction.id,
                SyncAction.outcome,
                # Acted on where the flags went: a merged contact's survivor, a converted lead's
                # contact (its type then told by its id).
                func.coalesce(SyncContact.written_to, SyncContact.record_id).label("record_id"),
                case((SyncContact.written_to.is_(None), SyncContact.object_type)).label("object_type"),
                SyncContact.value,
            )
            # By the contacts' (sync_id, id) index. Joined by id alone, with sync_actions not yet
            # analysed, the 97 pages of 1,000,000 contacts cost the write-back step 21 s more of
            # PostgreSQL CPU (43.0 s against 21.9 s).
            .join(
                SyncContact,
                and_(SyncContact.sync_id == SyncAction.sync_id, SyncContact.id == SyncAction.contact_id),
            )
            .where(
                SyncAction.sync_id == ctx.sync_id,
                SyncAction.action == action.key,
                SyncAction.outcome.in_((PENDING, ATTEMPTED)),
                SyncAction.id > after_id,
            )
            .order_by(SyncAction.id)
            .limit(runner.batch_size)
        ).all()
        if not rows:
            return None
        ids = [row.id for row in rows]
        session.execute(update(SyncAction).where(SyncAction.id.in_(ids)).values(outcome=ATTEMPTED))
    targets = [ActionTarget(row.record_id, row.object_type, row.value or "") for row in rows]
    resumed = [t for t, row in zip(targets, rows, strict=True) if row.outcome == ATTEMPTED]
    acted = runner.already_done(action, resumed) if resumed else set()
    todo = [t for t in targets if t.record_id not in acted]
    failures = runner.run(action, todo) if todo else []
    chaos_point("actions.after_call")
    _record_page(ctx, rows, {f.record_id: f"{f.code}: {f.message}" for f in failures})
    log.info(
        "actions_taken",
        extra={"sync_id": ctx.sync_id, "do": action.do, "records": len(todo), "already": len(acted),
               "failed": len(failures)},
    )  # fmt: skip
    return ids[-1]


def _record_page(ctx: StepContext, rows: Sequence[Any], refused: dict[str, str]) -> None:
    """The page's rows the CRM refused are failed, with its answer; the others done."""
    with ctx.session() as session:
        ctx.renew_lease(session)
        done = []
        for row in rows:
            if row.record_id in refused:
                session.execute(
                    update(SyncAction)
                    .where(SyncAction.id == row.id)
                    .values(outcome=FAILED, error_message=refused[row.record_id][:2000])
                )
            else:
                done.append(row.id)
        if done:
            session.execute(update(SyncAction).where(SyncAction.id.in_(done)).values(outcome=DONE))


def action_counts(session: Session, sync_id: int) -> tuple[dict[str, int], dict[str, int]]:
    """(actions taken, actions the CRM refused) per `do`, for the sync's counts."""
    taken: dict[str, int] = {}
    refused: dict[str, int] = {}
    query = (
        select(SyncAction.do, SyncAction.outcome, func.count())
        .where(SyncAction.sync_id == sync_id, SyncAction.outcome.in_((DONE, FAILED)))
        .group_by(SyncAction.do, SyncAction.outcome)
    )
    for do, outcome, count in session.execute(query):
        (taken if outcome == DONE else refused)[do] = count
    return taken, refused


def refused_actions(session: Session, sync_id: int, limit: int) -> list[dict[str, Any]]:
    """The first `limit` actions the CRM refused, with the record and its answer (never the value)."""
    rows = session.execute(
        select(SyncContact.record_id, SyncContact.object_type, SyncAction.do, SyncAction.error_message)
        .join(SyncContact, SyncContact.id == SyncAction.contact_id)
        .where(SyncAction.sync_id == sync_id, SyncAction.outcome == FAILED)
        .order_by(SyncAction.id)
        .limit(limit)
    )
    return [row._asdict() for row in rows]
