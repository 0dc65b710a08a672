"""Which source reads a sync's contacts and which writer takes its flags back."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import select

from connector.crm.base import FlagWriter, RecordReader, SegmentSource
from connector.crm.file import FileSegmentSource, NullFlagWriter
from connector.errors import ConnectorError
from connector.models import CoalescedContact, Connection, Sync
from connector.runtime import Runtime

if TYPE_CHECKING:  # imported where used: loading a CRM's client library is left to the syncs that need it
    from connector.crm.hubspot.api import HubSpotApi
    from connector.crm.salesforce.api import SalesforceApi

# How a CRM client waits between retries and polls: a step passes StepContext.sleep to keep its lease.
Sleep = Callable[[float], None]


def source_for(runtime: Runtime, sync: Sync, *, sleep: Sleep = time.sleep) -> SegmentSource:
    kind = sync.source.get("kind")
    if kind == "file":
        return FileSegmentSource(Path(sync.source["path"]), sync.type)
    if kind == "coalesced":
        from connector.pipeline.coalesce import CoalescedSource

        # A Salesforce message carries no time to order it by, Salesforce retries one for up to a
        # day, and anyone holding the token can claim any value: only a read by Id says what the
        # record holds. HubSpot's signed events are ordered by occurredAt in the buffer instead.
        return CoalescedSource(
            runtime,
            sync.id,
            sync.type,
            reader_for(runtime, sync, sleep=sleep),
            read_back=sync.crm == "salesforce",
        )
    if kind == "hubspot_list":
        from connector.crm.hubspot.api import HubSpotListSource

        return HubSpotListSource(
            _hubspot_api(runtime, sleep), sync.source["ref"], sync.type, work_dir=_work_dir(runtime, sync)
        )
    if kind in ("salesforce_campaign", "salesforce_soql"):
        from connector.crm.salesforce.api import SalesforceSegmentSource

        return SalesforceSegmentSource(
            _salesforce_api(runtime, sleep),
            sync.source,
            sync.type,
            field_names=_field_names(runtime, sync),
            work_dir=_work_dir(runtime, sync),
        )
    raise ConnectorError("unknown_source", f"sync {sync.id} has a source of unknown kind {kind!r}")


def reader_for(runtime: Runtime, sync: Sync, *, sleep: Sleep = time.sleep) -> RecordReader | None:
    if sync.crm == "hubspot":
        from connector.crm.hubspot.api import HubSpotRecordReader

        return HubSpotRecordReader(_hubspot_api(runtime, sleep), field_names=_field_names(runtime, sync))
    if sync.crm == "salesforce":
        from connector.crm.salesforce.api import SalesforceRecordReader

        return SalesforceRecordReader(
            _salesforce_api(runtime, sleep), field_names=_field_names(runtime, sync)
        )
    return None


def writer_for(
    runtime: Runtime, sync: Sync, *, expected_updates: int = 0, sleep: Sleep = time.sleep
) -> FlagWriter:
    """The writer for the sync's CRM; `expected_updates` lets it choose REST batches or a bulk job."""
    if sync.crm == "file":
        return NullFlagWriter()
    if sync.crm == "hubspot":
        from connector.crm.hubspot.api import HubSpotFlagWriter

        return HubSpotFlagWriter(
            _hubspot_api(runtime, sleep),
            sync.type,
            expected_updates=expected_updates,
            field_names=_field_names(runtime, sync),
            work_dir=_work_dir(runtime, sync),
        )
    if sync.crm == "salesforce":
        from connector.crm.salesforce.api import SalesforceFlagWriter

        return SalesforceFlagWriter(
            _salesforce_api(runtime, sleep),
            sync.type,
            objects=_salesforce_objects(runtime, sync),
            expected_updates=expected_updates,
            field_names=_field_names(runtime, sync),
            work_dir=_work_dir(runtime, sync),
        )
    raise ConnectorError("unknown_crm", f"sync {sync.id} names an unknown CRM {sync.crm!r}")


def _hubspot_api(runtime: Runtime, sleep: Sleep) -> HubSpotApi:
    from connector.crm.hubspot.api import HubSpotApi

    return HubSpotApi(runtime.settings, runtime.redis, sleep=sleep)


def _salesforce_api(runtime: Runtime, sleep: Sleep) -> SalesforceApi:
    from connector.crm.salesforce.api import SalesforceApi

    return SalesforceApi(runtime.settings, sleep=sleep)


def _salesforce_objects(runtime: Runtime, sync: Sync) -> tuple[str, ...]:
    """The objects the sync writes: its segment's object, or those its webhook contacts belong to."""
    if sync.source.get("object"):
        return (sync.source["object"],)
    if sync.source.get("kind") == "coalesced":
        with runtime.session() as session:
            found = session.scalars(
                select(CoalescedContact.object_type).where(CoalescedContact.sync_id == sync.id).distinct()
            ).all()
        return tuple(sorted(o for o in found if o in ("Contact", "Lead"))) or ("Contact",)
    return ("Contact", "Lead")


def _work_dir(runtime: Runtime, sync: Sync) -> Path:
    return runtime.data_dir() / "syncs" / str(sync.id)


def _field_names(runtime: Runtime, sync: Sync) -> dict[str, str] | None:
    with runtime.session() as session:
        connection = session.get(Connection, sync.connection_id)
        return (connection.settings or {}).get("field_names") if connection else None
