"""What ApexVerify answers: batch statuses, launch outcomes, batch details, errors, export records.

Kept apart from the HTTP client so the pipeline can reason about answers (and read export files)
without knowing how they were fetched.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import ijson

from connector.errors import ConnectorError


class BatchStatus(StrEnum):
    PARSING_CONTENT = "parsing_content"
    READY_FOR_VERIFICATION = "ready_for_verification"
    VERIFICATION_ONGOING = "verification_ongoing"
    VERIFICATION_DONE = "verification_done"
    INTERNAL_ERROR = "internal_error"


class LaunchOutcome(StrEnum):
    OK = "ok"
    NOT_READY = "not_ready_for_verification"
    ALREADY_ONGOING = "verification_already_ongoing"
    ALREADY_DONE = "verification_already_done"


class ApexVerifyError(ConnectorError):
    """A permanent ApexVerify failure: retrying the same call will not help.

    `code` is one of: parse_error, apexverify_error, apexverify_internal_error,
    insufficient_credits, apexverify_unauthorized, batch_not_found, invalid_request.
    """


@dataclass(frozen=True)
class BatchDetails:
    status: BatchStatus
    found_content: dict | None
    found_cost: dict | None
    stats: dict | None

    @property
    def net_cost(self) -> float | None:
        """Credits the launch will charge, after cache returns."""
        return self._cost("net_email_cost", "net_phone_cost")

    @property
    def total_cost(self) -> float | None:
        """Credits before cache returns."""
        return self._cost("total_email_cost", "total_phone_cost")

    def _cost(self, email_key: str, phone_key: str) -> float | None:
        if not self.found_cost:
            return None
        # A batch is either email or phone; 0.0 is a real cost, so test for presence, not truth.
        for key in (email_key, phone_key):
            value = self.found_cost.get(key)
            if value is not None:
                return float(value)
        return None


def _is_record(value: Any) -> bool:
    return isinstance(value, dict) and ("email" in value or "phone" in value or "valid" in value)


def iter_export_records(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield (value, record) for each verified email or phone in a JSON export, one at a time.

    The export is one object keyed by the verified value, plus a "statistics" section (and
    possibly other summaries) that are not records and are skipped. Only one record is held in
    memory at a time, so a million-record export costs no more than a small one.
    """
    with path.open("rb") as export:
        # use_float: numbers come back as int/float rather than Decimal.
        for key, value in ijson.kvitems(export, "", use_float=True):
            if key != "statistics" and _is_record(value):
                yield key, value
