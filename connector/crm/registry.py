"""The CRMs this connector speaks to: one line each in `CRMS`.

Everything CRM-specific is reached through a `Crm` found here: segment kinds (admin API, CLI,
OpenAPI enums), webhook routes, settings, sources, readers and writers. Adding a CRM is a
subpackage under connector/crm/ with a `CRM` and one line below (README, "Adding a CRM").
"""

from __future__ import annotations

from connector.config import Settings, read_section
from connector.crm import hubspot, salesforce
from connector.crm.base import Crm, SegmentKind

CRMS: dict[str, Crm] = {
    hubspot.CRM.name: hubspot.CRM,
    salesforce.CRM.name: salesforce.CRM,
}


def register(crm: Crm) -> None:
    """Add a CRM to the table (a plugin's, or a test's toy CRM)."""
    CRMS[crm.name] = crm


def crm_named(name: str | None) -> Crm | None:
    return CRMS.get(name or "")


def segment_kinds() -> dict[str, tuple[Crm, SegmentKind]]:
    """Every segment kind by name, with the CRM it belongs to."""
    return {kind.name: (crm, kind) for crm in CRMS.values() for kind in crm.segment_kinds}


def crm_of_kind(kind: str) -> Crm | None:
    found = segment_kinds().get(kind)
    return found[0] if found else None


def record_objects() -> list[str]:
    """Every record type a segment may name, over all CRMs."""
    return sorted({name for crm in CRMS.values() for name in crm.objects})


def check_settings(settings: Settings) -> None:
    """Read every CRM's settings now, so a malformed variable stops the process at start (ConfigError)."""
    for crm in CRMS.values():
        read_section(crm.settings, settings.env)
