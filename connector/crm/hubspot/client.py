"""The one place that builds a `hubspot.HubSpot` client for a base URL.

hubspot-api-client 12 copies every keyword it is given onto each API's generated
`Configuration` (`setattr(configuration, key, value)`), and `Configuration.host` is settable, so
`HubSpot(host=...)` points every API (contacts, lists, properties, exports, imports) at the same
base URL: https://api.hubapi.com in production, a sandbox in tests and demos.

No automatic retries: a 429 is a pause decided by the connector's own rate limiter, and a
retried write must be a decision, not a transport side effect.

No redirects either (`retry=NO_REDIRECTS`, connector/outbound.py): the bearer token is sent to the
base URL only, so a 3xx comes back as the client's ApiException and `HubSpotApi` refuses it as
`redirect_refused`. Every other URL is the base URL plus a path the generated client quotes.
"""

from __future__ import annotations

import hubspot

from connector.outbound import NO_REDIRECTS

DEFAULT_BASE_URL = "https://api.hubapi.com"


def make_hubspot_client(base_url: str = DEFAULT_BASE_URL, access_token: str | None = None) -> hubspot.HubSpot:
    return hubspot.HubSpot(access_token=access_token, host=base_url.rstrip("/"), retry=NO_REDIRECTS)
