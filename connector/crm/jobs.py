"""What the CRM bulk paths share: when they are used, resumable job markers, polling with a
lease-sized budget, UTC times."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol, TypeVar

from connector.config import Settings
from connector.errors import TransientError

T = TypeVar("T")

# Above this many records a segment is read, and flags are written, with the CRM's bulk jobs
# (exports/imports, Bulk API 2.0) instead of REST calls; syncs pass settings.crm_bulk_threshold.
DEFAULT_BULK_THRESHOLD = 10_000


class PollingApi(Protocol):
    settings: Settings
    sleep: Callable[[float], None]


@dataclass(frozen=True)
class JobMarker:
    """The id of a CRM job this step started, kept on disk so a rerun resumes it."""

    path: Path
    max_age: float | None = None

    def load(self) -> str | None:
        try:
            saved = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        if self.max_age is not None and time.time() - float(saved.get("saved_at", 0)) > self.max_age:
            return None
        return str(saved["id"]) if saved.get("id") else None

    def save(self, job_id: str) -> None:
        partial = self.path.with_suffix(".tmp")
        partial.write_text(json.dumps({"id": job_id, "saved_at": time.time()}))
        partial.replace(self.path)

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


def poll_until(
    api: PollingApi, fetch: Callable[[], T], finished: Callable[[T], bool], *, code: str, what: str
) -> T:
    """Fetch until `finished`, waiting longer each time; past half a step lease, try again later."""
    delay = api.settings.poll_initial_seconds
    budget = api.settings.step_lease_seconds / 2
    waited = 0.0
    while True:
        answer = fetch()
        if finished(answer):
            return answer
        if waited + delay > budget:
            raise TransientError(code, f"{what} is still running; checking again later", retry_after=delay)
        api.sleep(delay)
        waited += delay
        delay = min(delay * 2, api.settings.poll_max_seconds)


def seconds_until_utc_midnight(now: datetime | None = None) -> float:
    now = now or datetime.now(UTC)
    midnight = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return max(1.0, (midnight - now).total_seconds())


def utc_iso_millis(moment: datetime) -> str:
    moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
