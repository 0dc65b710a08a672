"""The orgs of the Salesforce sandbox and which one a request addresses.

The *default org* is the one the sandbox starts with (SALESFORCE_ORG_ID, else 00DDn0000000001):
the configured session id (SALESFORCE_ACCESS_TOKEN, any token when unset) and client-credentials
sessions address it. Other orgs are created empty when first named: by a consent for
`next_account` (POST /_sandbox/oauth) or by `?account=` on a control endpoint. An access token
issued by the OAuth web-server flow addresses the org it was issued for; every API route then
reads and writes that org's state only. Each org takes its ids from a serial range of its own
(salesforce_ids.py), so no record, job or cursor id is shared by two orgs.

Lock order: the directory's lock, then an org's; never the other way round.
"""

from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass

from flask import current_app

from connector.sandbox.salesforce_ids import MAX_ORGS, ORG_SERIAL_SPAN, to_18, to_org_id
from connector.sandbox.salesforce_state import SandboxConfig, SandboxState
from connector.sandbox.salesforce_tokens import OAuthBook


@dataclass
class Session:
    """The org a request addresses, and whether its session id is good (always, outside the API)."""

    state: SandboxState
    good: bool = True


class OrgDirectory:
    def __init__(self, template: SandboxConfig) -> None:
        self.lock = threading.RLock()
        self.template = template  # client id and secret, limits; each org's copy has its own org_id
        self.default = SandboxState(template)
        self.orgs = {template.org_id: self.default}
        self.oauth = OAuthBook(template.org_id)

    def org(self, org_id: str) -> SandboxState:
        """The org with this 18-character id, created empty when first named."""
        with self.lock:
            found = self.orgs.get(org_id)
            if found is None:
                if len(self.orgs) >= MAX_ORGS:
                    raise ValueError(f"the sandbox holds at most {MAX_ORGS} orgs")
                config = dataclasses.replace(self.template, org_id=org_id)
                found = self.orgs[org_id] = SandboxState(config, id_base=len(self.orgs) * ORG_SERIAL_SPAN)
            return found

    def account(self, raw: str | None) -> SandboxState:
        """The org `?account=` names (15 or 18 characters, 00D...); the default org when absent."""
        if not raw or to_18(raw) == self.template.org_id:  # SALESFORCE_ORG_ID may be any id
            return self.default
        return self.org(to_org_id(raw))

    def session(self, token: str) -> Session:
        """An API request's org: an OAuth access token's own, else the default org's sessions decide."""
        with self.lock:
            issued = self.oauth.access.get(token)
            if issued is not None:
                return Session(self.org(issued.org_id), self.oauth.accepts(token))
        with self.default.lock:
            return Session(self.default, self.default.tokens.accepts(token))

    def holder_of(self, token: str) -> SandboxState:
        """The org of a code or token (any kind, good or not); the default org for an unknown one."""
        with self.lock:
            org_id = self.oauth.org_of(token)
            return self.org(org_id) if org_id is not None else self.default

    def reset_all(self) -> None:
        """Back to how the sandbox started: the default org only, reset; no OAuth code or token."""
        with self.lock, self.default.lock:
            self.default.reset()
            self.orgs = {self.template.org_id: self.default}
            self.oauth = OAuthBook(self.template.org_id)


def org_directory() -> OrgDirectory:
    directory: OrgDirectory = current_app.extensions["salesforce_sandbox"]
    return directory
