"""The HubSpot variables of the environment (DESIGN.md), read by `Settings.section(HubSpotSettings)`."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class HubSpotSettings:
    access_token: str | None = field(default=None, repr=False, metadata={"env": "HUBSPOT_ACCESS_TOKEN"})
    base_url: str = field(default="https://api.hubapi.com", metadata={"env": "HUBSPOT_BASE_URL"})
    # The app's client secret: signs webhooks (X-HubSpot-Signature-v3) and, with HUBSPOT_CLIENT_ID, OAuth.
    client_secret: str | None = field(default=None, repr=False, metadata={"env": "HUBSPOT_CLIENT_SECRET"})
    client_id: str | None = field(default=None, metadata={"env": "HUBSPOT_CLIENT_ID"})
    # Where the install consent page lives (a sandbox in tests); tokens come from HUBSPOT_BASE_URL.
    auth_url: str = field(default="https://app.hubspot.com", metadata={"env": "HUBSPOT_AUTH_URL"})
    portal_id: str | None = field(default=None, metadata={"env": "HUBSPOT_PORTAL_ID"})
    rate_limit_per_10s: int = field(default=100, metadata={"env": "HUBSPOT_RATE_LIMIT_PER_10S"})
