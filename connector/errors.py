"""Errors carry a machine-readable code and a human message.

`ConnectorError` is permanent for the current step (the sync fails with its code and can be
retried by an operator). `TransientError` means "try the same step again later": rate limits,
outages and timeouts pause a sync instead of failing it.
"""

from __future__ import annotations


class ConnectorError(Exception):
    """A failure with a stable `code` (snake_case) and a message fit for an operator."""

    http_status = 500

    def __init__(self, code: str, message: str, *, details: dict | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details or {}

    def to_dict(self) -> dict[str, object]:
        body: dict[str, object] = {"error": self.code, "message": self.message}
        if self.details:
            body["details"] = self.details
        return body

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class ConfigError(ConnectorError):
    """Missing or malformed configuration."""

    http_status = 503


class InputError(ConnectorError):
    """Bad input from a caller (HTTP 400 or a CLI usage error)."""

    http_status = 400


class TransientError(ConnectorError):
    """The step should run again after `retry_after` seconds; the sync is not failed."""

    def __init__(
        self, code: str, message: str, *, retry_after: float = 5.0, details: dict | None = None
    ) -> None:
        super().__init__(code, message, details=details)
        self.retry_after = retry_after


class NotFoundError(ConnectorError):
    """The thing asked for does not exist."""

    http_status = 404


class WebhookRefused(ConnectorError):
    """A delivery that is not from the configured app, portal or org (401, or 403 for a foreign account)."""

    def __init__(self, code: str, message: str, http_status: int = 401) -> None:
        super().__init__(code, message)
        self.http_status = http_status


class UnsupportedMediaType(ConnectorError):
    """A body in a media type the endpoint does not read (415)."""

    http_status = 415

    def __init__(self, message: str) -> None:
        super().__init__("unsupported_media_type", message)
