"""The Salesforce variables of the environment (DESIGN.md), read by `Settings.section(SalesforceSettings)`."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class SalesforceSettings:
    instance_url: str | None = field(default=None, metadata={"env": "SALESFORCE_INSTANCE_URL"})
    access_token: str | None = field(default=None, repr=False, metadata={"env": "SALESFORCE_ACCESS_TOKEN"})
    client_id: str | None = field(default=None, metadata={"env": "SALESFORCE_CLIENT_ID"})
    client_secret: str | None = field(default=None, repr=False, metadata={"env": "SALESFORCE_CLIENT_SECRET"})
    api_version: str = field(default="62.0", metadata={"env": "SALESFORCE_API_VERSION"})
    org_id: str | None = field(default=None, metadata={"env": "SALESFORCE_ORG_ID"})
    webhook_token: str | None = field(default=None, repr=False, metadata={"env": "SALESFORCE_WEBHOOK_TOKEN"})
