"""The HubSpot sandbox's portals, and which one the current request addresses.

The sandbox is multi-portal: the state it starts with is the *default portal* (its portal_id),
and any other portal id names a portal of its own, created empty (with the default's starting
settings) the first time it is addressed. Before a view runs, connector/sandbox/hubspot.py picks
the portal — the bearer token's on API routes, `?account=` on /_sandbox/ control endpoints — with
`use_account`; the views then reach its state through `sandbox_state()`.
"""

from __future__ import annotations

import re
import threading

from flask import current_app, g

from connector.sandbox.hubspot_state import SandboxState

ACCOUNT_ARG = "account"
PORTAL_ID = re.compile(r"[0-9]{1,12}")


def portal_key(raw: object) -> str:
    """A portal id as the sandbox keys it (digits, no leading zeros); ValueError when it is none."""
    text = str(raw).strip()
    if isinstance(raw, bool) or not PORTAL_ID.fullmatch(text):
        raise ValueError(f"a portal id is a number, got {raw!r}")
    return str(int(text))


class Portals:
    """Every portal's state, by portal id."""

    def __init__(self, default: SandboxState) -> None:
        self.default_id = str(default.config.portal_id)
        self.default = default
        self._states = {self.default_id: default}
        self._lock = threading.Lock()

    def get(self, portal_id: str | None) -> tuple[str, SandboxState]:
        """(id, state) of the portal `portal_id` names (None: the default one), created on first use."""
        if portal_id is None:
            return self.default_id, self.default
        key = portal_key(portal_id)
        with self._lock:
            state = self._states.get(key)
            if state is None:
                state = self._states[key] = self.default.sibling(int(key))
        return key, state


def portals() -> Portals:
    return current_app.extensions["hubspot_portals"]


def use_account(portal_id: str | None) -> SandboxState:
    """Make `portal_id`'s portal (None: the default one) the one this request's views work on."""
    g.hubspot_account, g.hubspot_state = portals().get(portal_id)
    return g.hubspot_state


def sandbox_state() -> SandboxState:
    """The state of the portal the current request addresses (the default portal unless chosen)."""
    state = g.get("hubspot_state")
    return state if state is not None else portals().default


def current_account() -> str:
    """The id of the portal the current request addresses."""
    return str(g.get("hubspot_account") or portals().default_id)


def account_query() -> str:
    """What a /_sandbox/ URL needs to reach the current request's portal: `?account=<id>`, or
    nothing for the default portal."""
    account = current_account()
    return "" if account == portals().default_id else f"?{ACCOUNT_ARG}={account}"
