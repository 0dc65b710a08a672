"""The one place that builds a `simple_salesforce.Salesforce` for our settings.

simple-salesforce 1.12 keeps only the host of an instance URL and writes `https://` in front of it
in several places: the URL attributes set in `__init__` (base_url, bulk2_url, ...), the
nextRecordsUrl follow-up of `query_more`/`query_all_iter`, and every `sf.<Object>` (SFType)
handle. `ConnectorSalesforce` is a small subclass that puts the configured scheme back in those
three places, so an `http://` sandbox works the same as `https://acme.my.salesforce.com`.

Auth: a session id (SALESFORCE_ACCESS_TOKEN) is used as given. With client credentials
(SALESFORCE_CLIENT_ID / SALESFORCE_CLIENT_SECRET) we fetch the token ourselves from
`<instance>/services/oauth2/token`, because simple-salesforce's own client-credentials login
only reaches `https://<domain>.salesforce.com`. Refreshing is simple-salesforce's own: on a 401
INVALID_SESSION_ID from a REST call (query, restful, sf.Contact...) it calls the object's login
callable, which for us fetches a new token, and retries. Bulk API 2.0 calls (`sf.bulk2`) do not
retry: catch `SalesforceExpiredSession`, call `refresh_session(sf)` and ask `sf.bulk2` again
(each access builds a handler with the current session id).

Credentials stay on the instance (connector/outbound.py): the session is a `PinnedSession`, so no
request leaves the instance URL or follows a redirect, and a `nextRecordsUrl` must be a path under
/services/data/ of the instance (`untrusted_url` otherwise).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import requests
from simple_salesforce import Salesforce, SFType
from simple_salesforce.exceptions import SalesforceAuthenticationFailed

from connector.outbound import PinnedSession, path_on

DEFAULT_VERSION = "62.0"
TOKEN_TIMEOUT_SECONDS = 30


@dataclass(frozen=True)
class TokenGrant:
    access_token: str
    instance_url: str


def fetch_client_credentials_token(
    instance_url: str, client_id: str, client_secret: str, session: requests.Session | None = None
) -> TokenGrant:
    """A session id from the OAuth 2.0 client-credentials flow of the org at `instance_url`."""
    response = (session or pinned_session(instance_url)).post(
        f"{instance_url.rstrip('/')}/services/oauth2/token",
        data={"grant_type": "client_credentials", "client_id": client_id, "client_secret": client_secret},
        timeout=TOKEN_TIMEOUT_SECONDS,
    )
    try:
        body = response.json()
    except ValueError:
        body = {}
    if response.status_code != 200 or not body.get("access_token"):
        code = body.get("error") or response.status_code
        raise SalesforceAuthenticationFailed(code, body.get("error_description") or response.text[:200])
    return TokenGrant(body["access_token"], body.get("instance_url") or instance_url)


class ConnectorSalesforce(Salesforce):
    """simple-salesforce's client, keeping the instance URL's scheme; refreshes when given a token source."""

    def __init__(
        self,
        instance_url: str,
        *,
        session_id: str,
        version: str = DEFAULT_VERSION,
        token_source: Callable[[], str] | None = None,
        session: requests.Session | None = None,
    ) -> None:
        # Set before super().__init__: Salesforce.__getattr__ turns any missing attribute into an SFType.
        self.instance_root = instance_url.rstrip("/")
        super().__init__(
            session_id=session_id,
            instance_url=self.instance_root,
            version=version,
            session=session or pinned_session(self.instance_root),
        )
        self._use_scheme()
        if token_source is not None:
            # simple-salesforce refreshes on INVALID_SESSION_ID only when it holds a login callable;
            # it expects (session id, instance host) back and keeps our URLs as they are.
            self._salesforce_login_partial = partial(self._fresh_session, token_source)

    def _fresh_session(self, token_source: Callable[[], str]) -> tuple[str, str]:
        return token_source(), self.sf_instance

    def _use_scheme(self) -> None:
        root, version = self.instance_root, self.sf_version
        self.base_url = f"{root}/services/data/v{version}/"
        self.apex_url = f"{root}/services/apexrest/"
        self.bulk_url = f"{root}/services/async/{version}/"
        self.bulk2_url = f"{root}/services/data/v{version}/jobs/"
        self.metadata_url = f"{root}/services/Soap/m/{version}/"
        self.tooling_url = f"{self.base_url}tooling/"
        self.oauth2_url = f"{root}/services/oauth2/"

    def query_more(
        self,
        next_records_identifier: str,
        identifier_is_url: bool = False,
        include_deleted: bool = False,
        **kwargs: Any,
    ) -> Any:
        if not identifier_is_url:
            return super().query_more(next_records_identifier, False, include_deleted, **kwargs)
        url = path_on(
            self.instance_root, next_records_identifier, "/services/data/",
            service="Salesforce", what="nextRecordsUrl",
        )  # fmt: skip
        result = self._call_salesforce("GET", url, name="query_more", **kwargs)
        return self.parse_result_to_json(result)

    def __getattr__(self, name: str) -> Any:
        handle = super().__getattr__(name)
        if isinstance(handle, SFType):
            handle.base_url = f"{self.instance_root}/services/data/v{self.sf_version}/sobjects/{name}/"
        return handle


def make_salesforce(
    instance_url: str,
    *,
    session_id: str | None = None,
    client_id: str | None = None,
    client_secret: str | None = None,
    version: str = DEFAULT_VERSION,
) -> ConnectorSalesforce:
    """A client for the org at `instance_url` (https:// in production, http:// for a local sandbox).

    With a session id it is used first; with client credentials too (or only), new session ids are
    fetched from the org's token endpoint whenever Salesforce says the current one is invalid.
    """
    session = pinned_session(instance_url)
    token_source = None
    if client_id and client_secret:
        token_source = _token_source(instance_url, client_id, client_secret, session)
    if session_id is None:
        if token_source is None:
            raise ValueError("Salesforce needs a session id or client credentials (client id and secret)")
        session_id = token_source()
    return ConnectorSalesforce(
        instance_url, session_id=session_id, version=version, token_source=token_source, session=session
    )


def _token_source(
    instance_url: str, client_id: str, client_secret: str, session: requests.Session
) -> Callable[[], str]:
    def fetch() -> str:
        return fetch_client_credentials_token(instance_url, client_id, client_secret, session).access_token

    return fetch


def pinned_session(instance_url: str) -> PinnedSession:
    """The requests session for the org: to its instance URL only, never following a redirect."""
    return PinnedSession(instance_url, service="Salesforce", setting="SALESFORCE_INSTANCE_URL")


def refresh_session(sf: Salesforce) -> None:
    """Fetch a new session id now (for Bulk API 2.0 calls, which simple-salesforce does not retry)."""
    sf._refresh_session()
