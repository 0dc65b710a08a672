"""Segments: a CRM list, campaign or SOQL filter, with its verification parameters and schedule."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

from croniter import CroniterBadDateError, croniter
from sqlalchemy import select, update

from connector.crm.base import SegmentKind
from connector.crm.registry import segment_kinds
from connector.errors import ConnectorError, InputError, NotFoundError
from connector.models import Connection, Segment, Sync, utcnow
from connector.pipeline.actions import validate_actions
from connector.pipeline.parameters import validate_country, validate_parameters, validate_type
from connector.pipeline.syncs import create_sync
from connector.runtime import Runtime
from connector.states import UNSETTLED_VALUES

FIELDS = {"crm", "kind", "ref", "object", "type", "parameters", "schedule", "reverify_after_days",
          "max_net_cost", "name", "target_country", "actions"}  # fmt: skip
# Also accepted on input: the connection the segment syncs through (pipeline/connections.py picks
# the CRM's only one when it is left out).
INPUT_FIELDS = FIELDS | {"connection_id"}
# A schedule must fire within this many years (a five-field cron that fires at all does: 29 February
# skips at most eight, 2096 to 2104); croniter would otherwise search 50 years, then raise.
SCHEDULE_HORIZON_YEARS = 8


def validate_segment(data: Any, current: dict[str, Any] | None = None) -> dict[str, Any]:
    """The segment's fields, checked; `current` holds the stored ones when patching."""
    if not isinstance(data, dict):
        raise InputError("malformed_json", "expected a JSON object")
    unknown = set(data) - INPUT_FIELDS
    if unknown:
        raise InputError("unknown_field", f"unknown field(s): {', '.join(sorted(unknown))}")
    merged = {**(current or {}), **data}
    kinds = segment_kinds()
    kind = merged.get("kind")
    if kind not in kinds:
        raise InputError("invalid_kind", f"kind must be one of {', '.join(kinds)}")
    crm, segment_kind = kinds[kind]
    if merged.get("crm", crm.name) != crm.name:
        raise InputError("invalid_crm", f"a {kind} segment belongs to crm {crm.name}")
    type_ = validate_type(merged.get("type", "email"))
    return {
        "crm": crm.name,
        "kind": kind,
        "ref": _ref(merged.get("ref"), segment_kind),
        "object": crm.check_object(merged.get("object")),
        "type": type_,
        "parameters": _parameters(merged.get("parameters")),
        "schedule": _schedule(merged.get("schedule")),
        "reverify_after_days": _int_in(merged.get("reverify_after_days", 30), "reverify_after_days", 0, 3650),
        "max_net_cost": _cost(merged.get("max_net_cost")),
        "name": _name(merged.get("name")),
        "target_country": validate_country(merged["target_country"])
        if merged.get("target_country")
        else None,
        "actions": validate_actions(merged.get("actions"), crm, type_),
    }


def _ref(raw: Any, kind: SegmentKind) -> str:
    if not isinstance(raw, str) or not raw.strip():
        raise InputError("invalid_ref", "ref must be a non-empty string")
    return kind.check_ref(raw).strip()


def _parameters(raw: Any) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise InputError("invalid_parameters", "parameters must be an object of ApexVerify parameters")
    return validate_parameters(raw)


def _schedule(raw: Any) -> str | None:
    if raw is None:
        return None
    # Five fields (or an alias such as @daily): due times are keyed per minute, so a seconds
    # field would be silently ignored.
    fields = raw.split() if isinstance(raw, str) else []
    five_or_alias = len(fields) == 5 or (len(fields) == 1 and fields[0].startswith("@"))
    if not five_or_alias or not croniter.is_valid(" ".join(fields)):
        raise InputError(
            "invalid_schedule", "schedule must be a five-field cron expression such as '0 3 * * *', or null"
        )
    schedule = " ".join(fields)
    try:  # valid but impossible, such as 30 February: no tick would ever start it
        croniter(schedule, utcnow(), max_years_between_matches=SCHEDULE_HORIZON_YEARS).get_next(datetime)
    except CroniterBadDateError:
        raise InputError(
            "invalid_schedule",
            f"schedule never fires: no time in the next {SCHEDULE_HORIZON_YEARS} years matches it",
        ) from None
    return schedule


def _int_in(raw: Any, name: str, low: int, high: int) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int) or not low <= raw <= high:
        raise InputError(f"invalid_{name}", f"{name} must be an integer from {low} to {high}")
    return raw


def _cost(raw: Any) -> float | None:
    if raw is None:
        return None
    # NaN and Infinity parse as JSON numbers here but would disable the budget check.
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw) or raw < 0:
        raise InputError("invalid_max_net_cost", "max_net_cost must be a number of credits >= 0, or null")
    return float(raw)


def _name(raw: Any) -> str | None:
    if raw is None:
        return None
    if not isinstance(raw, str) or len(raw) > 255:
        raise InputError("invalid_name", "name must be a string of at most 255 characters")
    return raw


def segment_json(segment: Segment) -> dict[str, Any]:
    return {
        "id": segment.id,
        **{name: getattr(segment, name) for name in sorted(FIELDS)},
        "connection_id": segment.connection_id,
        "created_at": segment.created_at.isoformat(),
        "updated_at": segment.updated_at.isoformat(),
    }


def create_segment(runtime: Runtime, data: Any) -> Segment:
    from connector.pipeline.connections import segment_connection

    fields = validate_segment(data)
    connection = segment_connection(runtime, fields["crm"], data.get("connection_id"))
    with runtime.session() as session:
        segment = Segment(connection_id=connection.id, **fields)
        session.add(segment)
    return segment


def update_segment(runtime: Runtime, segment_id: int, data: Any) -> Segment:
    from connector.pipeline.connections import segment_connection

    with runtime.session() as session:
        segment = get_segment(session, segment_id)
        fields = validate_segment(data, {name: getattr(segment, name) for name in FIELDS})
        if "connection_id" in data:
            segment.connection_id = segment_connection(runtime, fields["crm"], data["connection_id"]).id
        elif fields["crm"] != segment.crm:  # moved to the other CRM: its syncs must use that CRM's connection
            segment.connection_id = segment_connection(runtime, fields["crm"]).id
        for name, value in fields.items():
            setattr(segment, name, value)
        segment.updated_at = utcnow()
    return segment


def delete_segment(runtime: Runtime, segment_id: int) -> None:
    with runtime.session() as session:
        get_segment(session, segment_id).deleted_at = utcnow()


def list_segments(session: Any) -> list[Segment]:
    """Every segment not deleted, oldest first."""
    query = select(Segment).where(Segment.deleted_at.is_(None)).order_by(Segment.id)
    return list(session.scalars(query))


def get_segment(session: Any, segment_id: int) -> Segment:
    segment = session.get(Segment, segment_id)
    if segment is None or segment.deleted_at is not None:
        raise NotFoundError("segment_not_found", f"segment {segment_id} does not exist")
    return segment


class ConnectionDisconnected(ConnectorError):
    http_status = 409


def sync_segment(
    runtime: Runtime,
    segment_id: int,
    trigger: str,
    *,
    idempotency_key: str | None = None,
    plan_requested: bool = False,
) -> Sync:
    """Start a sync of the segment (a plan: see plan_segment), or answer with the one still running."""
    with runtime.session() as session:
        segment = get_segment(session, segment_id)
        running = session.scalars(
            select(Sync).where(Sync.segment_id == segment_id, Sync.status.in_(UNSETTLED_VALUES))
        ).first()
        if running is not None:
            return running
        connection = session.get(Connection, segment.connection_id)
        if connection is None or connection.status == "disconnected":
            raise ConnectionDisconnected(
                "connection_disconnected",
                f"segment {segment_id} syncs through connection {segment.connection_id}, which is "
                "disconnected: install it again (or move the segment to another connection) first",
            )
        connection_settings = connection.settings or {}
    country = segment.target_country or connection_settings.get(
        "default_country", runtime.settings.default_country
    )
    sync = create_sync(
        runtime,
        connection_id=segment.connection_id,
        crm=segment.crm,
        type_=segment.type,
        target_country=country,
        source={"kind": segment.kind, "ref": segment.ref, "object": segment.object},
        trigger=trigger,
        name=segment.name or f"{segment.kind} {segment.ref[:80]}",
        parameters=segment.parameters,
        segment_id=segment.id,
        reverify_after_days=segment.reverify_after_days,
        max_net_cost=segment.max_net_cost,
        idempotency_key=idempotency_key,
        actions=segment.actions,
        plan_requested=plan_requested,
    )
    return sync if sync.segment_id is not None else _adopt(runtime, sync, segment.id)


class SegmentBusy(ConnectorError):
    http_status = 409


def plan_segment(runtime: Runtime, segment_id: int, trigger: str = "admin") -> Sync:
    """Start a plan of the segment: a sync that exports, uploads and parses, then waits in
    awaiting_approval (whatever the cost) with its `plan`; nothing is launched or written before
    approval. A plan still unapproved answers again (idempotent); any other unsettled sync of the
    segment refuses it, since that sync would be launched whatever the plan said."""
    sync = sync_segment(runtime, segment_id, trigger, plan_requested=True)
    if sync.plan_requested and sync.approved_at is None:
        return sync
    raise SegmentBusy(
        "segment_busy",
        f"segment {segment_id} is being synced by sync {sync.id} ({sync.status}); "
        "ask for a plan once it has settled",
    )


def _adopt(runtime: Runtime, sync: Sync, segment_id: int) -> Sync:
    """The segment's source was already being synced without it (a webhook's list trigger won the
    race): that sync reads the segment's contacts, so it becomes the segment's running sync."""
    with runtime.session() as session:
        session.execute(
            update(Sync).where(Sync.id == sync.id, Sync.segment_id.is_(None)).values(segment_id=segment_id)
        )
        adopted = session.get(Sync, sync.id)
        assert adopted is not None
        return adopted
