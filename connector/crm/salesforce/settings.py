"""The Salesforce variables of the environment (DESIGN.md), read by `Settings.section(SalesforceSettings)`."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class SalesforceSettings:
    instance_url: str | None = field(default=None, metadata={"env": "SALESFORCE_INSTANCE_URL"})
    access_token: str | None = field(default=None, repr=False, metadata={"env": "SALESFORCE_ACCESS_TOKEN"})
    # The connected app: OAuth installs (web-server flow, PKCE), the env connection's client credentials.
    client_id: str | None = field(default=None, metadata={"env": "SALESFORCE_CLIENT_ID"})
    client_secret: str | None = field(default=None, repr=False, metadata={"env": "SALESFORCE_CLIENT_SECRET"})
    api_version: str = field(default="62.0", metadata={"env": "SALESFORCE_API_VERSION"})
    org_id: str | None = field(default=None, metadata={"env": "SALESFORCE_ORG_ID"})
    # Where OAuth installs authorize, and tokens are exchanged, refreshed and revoked (a sandbox in tests).
    login_url: str = field(default="https://login.salesforce.com", metadata={"env": "SALESFORCE_LOGIN_URL"})
    webhook_token: str | None = field(default=None, repr=False, metadata={"env": "SALESFORCE_WEBHOOK_TOKEN"})
