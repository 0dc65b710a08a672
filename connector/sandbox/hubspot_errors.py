"""HubSpot's error answers, as the HubSpot sandbox sends them.

Every v3 error body carries `status: "error"`, a human `message`, a `correlationId` (a UUID) and a
`category` such as VALIDATION_ERROR, OBJECT_NOT_FOUND, CONFLICT or INVALID_AUTHENTICATION (the
`Error` schema of the specs); rate limit answers use `errorType`/`policyName` instead.
"""

from __future__ import annotations

import uuid
from typing import Any


def correlation_id() -> str:
    return str(uuid.uuid4())


def error_body(category: str, message: str, **extra: Any) -> dict[str, Any]:
    return {
        "status": "error",
        "message": message,
        "correlationId": correlation_id(),
        "category": category,
        **extra,
    }


def rate_limit_body(policy_name: str, group_name: str) -> dict[str, Any]:
    kind = "ten_secondly_rolling" if policy_name == "TEN_SECONDLY_ROLLING" else "daily"
    return {
        "status": "error",
        "message": f"You have reached your {kind} limit.",
        "errorType": "RATE_LIMIT",
        "correlationId": correlation_id(),
        "policyName": policy_name,
        "groupName": group_name,
    }


def standard_error(category: str, message: str, context: dict[str, list[str]], details: list[dict]) -> dict:
    """One entry of a batch answer's `errors` (the StandardError schema: all fields required)."""
    return {
        "status": "error",
        "category": category,
        "message": message,
        "context": context,
        "errors": details,
        "links": {},
    }


class HubSpotError(Exception):
    """An answer other than success; the sandbox's views raise it and one handler renders it."""

    def __init__(self, status: int, category: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.category = category
        self.message = message
        self.extra = extra

    def body(self) -> dict[str, Any]:
        return error_body(self.category, self.message, **self.extra)


def validation_error(message: str, **extra: Any) -> HubSpotError:
    return HubSpotError(400, "VALIDATION_ERROR", message, **extra)


def not_found(message: str = "resource not found") -> HubSpotError:
    return HubSpotError(404, "OBJECT_NOT_FOUND", message)
