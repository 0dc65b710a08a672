"""The runtime of the app handling the current request (set by the app factory), and what every
blueprint reads of the request the same way."""

from __future__ import annotations

from flask import current_app, request

from connector.runtime import Runtime

# A URL rule for a row id: ids are BIGINT, and a larger number must not reach SQL.
ROW_ID = "int(max=9223372036854775807)"


def current_runtime() -> Runtime:
    runtime: Runtime = current_app.extensions["connector"]
    return runtime


def public_base_url() -> str:
    """Where CRMs and browsers reach this deployment: PUBLIC_BASE_URL (behind a proxy), else the URL
    the current request came to; no trailing slash."""
    public = current_runtime().settings.public_base_url
    return (public or request.host_url).rstrip("/")
