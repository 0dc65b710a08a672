"""What every CRM's OAuth client does with the CRM's token endpoints: one request, its answer read.

A token request carries secrets both ways (the client secret and a code or refresh token out, tokens
back), so it goes through a `PinnedSession` (connector/outbound.py: to the configured origin only,
never following a redirect) with a time limit, and nothing it sends appears in an error: a CRM may
echo a value back in its message, so the messages are redacted with the values the request carried.
Tokens it brings are handed to the log redaction at once (`learn`).

The CRM gave no answer, or a 5xx or 429: TransientError (the install page says try again; a sync
pauses and the refresh is tried again later). Every other answer is returned for the CRM's own
module to read. `requests` is imported when a request is made, so that importing a CRM's package
(the CLI does) does not load it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from connector.crm.calls import redact
from connector.errors import ConfigError, TransientError
from connector.logs import add_secret

TOKEN_TIMEOUT = (10.0, 30.0)  # (connect, read) seconds
UNAVAILABLE_RETRY_AFTER = 30.0


@dataclass(frozen=True)
class TokenAnswer:
    status: int
    body: Mapping[str, Any] = field(default_factory=dict)  # the JSON object answered; {} otherwise
    hidden: tuple[str, ...] = ()  # what the request carried that no message may show

    def text(self, key: str) -> str | None:
        value = self.body.get(key)
        return str(value) if value is not None and value != "" else None

    def says(self, *keys: str, default: str) -> str:
        """The first of these fields the CRM answered (an error code or message), redacted."""
        found = next((self.text(key) for key in keys if self.text(key)), None)
        return redact(found or default, self.hidden)[:300]


def send(
    method: str,
    url: str,
    *,
    service: str,
    setting: str,
    code: str,
    data: Mapping[str, str] | None = None,
    secrets: Iterable[str | None] = (),
) -> TokenAnswer:
    """One request to a CRM's OAuth endpoint; TransientError (`<code>_unavailable`) without a usable answer.

    `setting` names the variable that configures the URL (in a refused redirect's message), `code`
    prefixes error codes, `secrets` (the client secret, a code or token sent) are never shown in a
    message and never logged."""
    # Loaded on the first OAuth call, not at import: the CRM packages are imported by every CLI
    # command, and requests is not needed by most of them.
    import requests

    from connector.outbound import PinnedSession

    hidden = tuple(secret for secret in secrets if secret)
    add_secret(*hidden)
    session = PinnedSession(url, service=service, setting=setting)
    try:
        response = session.request(
            method, url, data=data, timeout=TOKEN_TIMEOUT, headers={"Accept": "application/json"}
        )
    except (
        requests.exceptions.InvalidURL,
        requests.exceptions.MissingSchema,
        requests.exceptions.InvalidSchema,
    ):
        raise ConfigError(f"{code}_misconfigured", f"{setting} is not a usable URL") from None
    except requests.RequestException as exc:
        raise TransientError(
            f"{code}_unavailable",
            f"{service}'s OAuth endpoint did not answer ({type(exc).__name__}); try again shortly",
            retry_after=UNAVAILABLE_RETRY_AFTER,
        ) from None
    finally:
        session.close()
    if response.status_code >= 500 or response.status_code == 429:
        raise TransientError(
            f"{code}_unavailable",
            f"{service}'s OAuth endpoint answered HTTP {response.status_code}; try again shortly",
            retry_after=UNAVAILABLE_RETRY_AFTER,
        )
    try:
        body = json.loads(response.content) if response.content else {}
    except (ValueError, UnicodeDecodeError):
        body = {}
    return TokenAnswer(response.status_code, body if isinstance(body, dict) else {}, hidden)
