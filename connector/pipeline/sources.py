"""Which source reads a sync's contacts and which writer takes its flags back.

A file sync reads its file and writes nowhere; a sync of buffered webhook contacts reads the
buffer (and, for a CRM whose deliveries are hints, each record's current value by id); a segment
sync reads the segment through its CRM. CRM-specific objects come from the CRM's entry in
crm/registry.py.
"""

from __future__ import annotations

import time
from pathlib import Path

from sqlalchemy import select

from connector.crm.base import (
    ActionRunner,
    Crm,
    CrmContext,
    FlagWriter,
    RecordReader,
    SegmentSource,
    Sleep,
)
from connector.crm.file import FileSegmentSource, NullFlagWriter
from connector.crm.registry import crm_named, crm_of_kind
from connector.crm.tokens import account_for
from connector.errors import ConnectorError
from connector.models import CoalescedContact, Connection, Sync
from connector.pipeline.coalesce import CoalescedSource
from connector.runtime import Runtime


def source_for(runtime: Runtime, sync: Sync, *, sleep: Sleep = time.sleep) -> SegmentSource:
    kind = sync.source.get("kind")
    if kind == "file":
        return FileSegmentSource(Path(sync.source["path"]), sync.type)
    if kind == "coalesced":
        crm = crm_named(sync.crm)
        return CoalescedSource(
            runtime,
            sync.id,
            sync.type,
            reader_for(runtime, sync, sleep=sleep),
            read_back=crm is not None and crm.read_back_buffered,
        )
    crm = crm_of_kind(str(kind))
    if crm is None:
        raise ConnectorError("unknown_source", f"sync {sync.id} has a source of unknown kind {kind!r}")
    return crm.segment_source(crm_context(runtime, sync, sleep), sync.source, sync.type)


def reader_for(runtime: Runtime, sync: Sync, *, sleep: Sleep = time.sleep) -> RecordReader | None:
    crm = crm_named(sync.crm)
    return crm.record_reader(crm_context(runtime, sync, sleep)) if crm else None


def writer_for(
    runtime: Runtime,
    sync: Sync,
    *,
    expected_updates: int = 0,
    sleep: Sleep = time.sleep,
    objects: tuple[str, ...] | None = None,
) -> FlagWriter:
    """The writer for the sync's CRM; `expected_updates` lets it choose REST batches or a bulk job.
    It writes the sync's record types unless `objects` names others (a converted lead's contact)."""
    if sync.crm == "file":
        return NullFlagWriter()
    crm = crm_named(sync.crm)
    if crm is None:
        raise ConnectorError("unknown_crm", f"sync {sync.id} names an unknown CRM {sync.crm!r}")
    context = crm_context(runtime, sync, sleep)
    return crm.flag_writer(context, sync.type, expected_updates, objects or _objects(runtime, crm, sync))


def action_runner_for(
    runtime: Runtime, sync: Sync, *, expected: int, sleep: Sleep = time.sleep
) -> ActionRunner:
    """The runner of the sync's CRM's verdict actions; `expected` records let it choose batches or bulk."""
    crm = crm_named(sync.crm)
    if crm is None or crm.action_runner is None:
        raise ConnectorError("actions_unsupported", f"sync {sync.id}: {sync.crm} takes no verdict actions")
    return crm.action_runner(crm_context(runtime, sync, sleep), sync.type, expected)


def crm_context(runtime: Runtime, sync: Sync, sleep: Sleep) -> CrmContext:
    with runtime.session() as session:
        connection = session.get(Connection, sync.connection_id)
        if connection is None:
            raise ConnectorError("unknown_connection", f"sync {sync.id} names a missing connection")
        session.expunge(connection)
    return CrmContext(
        settings=runtime.settings,
        redis=runtime.redis,
        sleep=sleep,
        work_dir=runtime.data_dir() / "syncs" / str(sync.id),
        field_names=(connection.settings or {}).get("field_names"),
        account=account_for(runtime, connection),
    )


def _objects(runtime: Runtime, crm: Crm, sync: Sync) -> tuple[str, ...]:
    """The record types the sync writes: its segment's, or those its webhook contacts came in."""
    if sync.source.get("object"):
        return (sync.source["object"],)
    if sync.source.get("kind") == "coalesced":
        with runtime.session() as session:
            found = session.scalars(
                select(CoalescedContact.object_type).where(CoalescedContact.sync_id == sync.id).distinct()
            ).all()
        return tuple(sorted(o for o in found if o in crm.objects)) or crm.objects[:1]
    return crm.objects
