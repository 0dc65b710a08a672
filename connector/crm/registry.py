"""Which source reads a sync's contacts and which writer takes its flags back."""

from __future__ import annotations

from pathlib import Path

from connector.crm.base import FlagWriter, SegmentSource
from connector.crm.file import FileSegmentSource, NullFlagWriter
from connector.errors import ConnectorError
from connector.models import Sync
from connector.runtime import Runtime


def source_for(runtime: Runtime, sync: Sync) -> SegmentSource:
    kind = sync.source.get("kind")
    if kind == "file":
        return FileSegmentSource(Path(sync.source["path"]), sync.type)
    raise ConnectorError("unknown_source", f"sync {sync.id} has a source of unknown kind {kind!r}")


def writer_for(runtime: Runtime, sync: Sync, *, expected_updates: int = 0) -> FlagWriter:
    """The writer for the sync's CRM; `expected_updates` lets it choose REST batches or a bulk job."""
    if sync.crm == "file":
        return NullFlagWriter()
    raise ConnectorError("unknown_crm", f"sync {sync.id} names an unknown CRM {sync.crm!r}")
