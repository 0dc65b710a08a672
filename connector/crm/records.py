"""What every CRM's record readers share: what they start from (`RecordReading`), a blank value
is no value, and the verified-at flag a CRM stores reads back as an aware datetime (UTC when the
CRM gives no offset)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

ApiT = TypeVar("ApiT")


def blank_to_none(value: Any) -> str | None:
    return str(value) if value is not None and str(value).strip() != "" else None


def parse_utc_datetime(raw: Any) -> datetime | None:
    """An ISO 8601 time as an aware datetime; None when it is blank, not text or not a time."""
    if not isinstance(raw, str) or not raw.strip():
        return None
    try:
        moment = datetime.fromisoformat(raw.strip())
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


class RecordReading(Generic[ApiT]):
    """What every CRM's record reader starts from: its API, and the connection's renamed flags
    (the verified-at flag is read with the value)."""

    def __init__(self, api: ApiT, *, field_names: dict[str, str] | None = None) -> None:
        self.api = api
        self.field_names = field_names
