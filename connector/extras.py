"""Optional dependencies: what an install of the product alone (`pip install apexverify-crm-connector`)
lacks, and the one-line error a command that needs them gives.

The `sandbox` extra (in `[dev]` too) holds what only the local sandboxes (connector/sandbox/) and the
in-process broker (fakeredis, standing in for Redis: `connector demo`, `connector verify` without
REDIS_URL) need. The web, worker and cron processes run without it (while Redis is down, the admin
sign-in throttle counts in this process's memory: connector.ratelimit.window).
"""

from __future__ import annotations

import importlib.util

from connector.errors import ConnectorError

SANDBOX_INSTALL = "pip install 'apexverify-crm-connector[sandbox]'"
# The extra's packages, by the name they are imported as (lupa: fakeredis's Lua, which RQ's scripts need).
SANDBOX_MODULES = ("fakeredis", "lupa", "jsonschema", "referencing")


class ExtraMissing(ConnectorError):
    """Something this install lacks the `sandbox` extra for (a CLI command exits 2 with the message)."""

    http_status = 503

    def __init__(self, needed_by: str, *, alternative: str = "") -> None:
        message = f"{needed_by} needs the sandbox extra: {SANDBOX_INSTALL}"
        super().__init__("sandbox_extra_missing", message + (f", or {alternative}" if alternative else ""))


def sandbox_extra_installed() -> bool:
    return all(importlib.util.find_spec(name) is not None for name in SANDBOX_MODULES)


def require_sandbox_extra(needed_by: str, *, alternative: str = "") -> None:
    """ExtraMissing unless the `sandbox` extra is installed."""
    if not sandbox_extra_installed():
        raise ExtraMissing(needed_by, alternative=alternative)
