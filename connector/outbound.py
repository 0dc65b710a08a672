"""Requests that carry credentials go to the configured service and nowhere else.

Every call to ApexVerify and to a CRM carries a secret (`X-Api-Key`, a bearer token, a
client secret in a token request). Two ways it could travel further than its base URL:

- A redirect. requests drops `Authorization` on a redirect to another host but keeps every other
  header (`X-Api-Key`) and, on a 307/308, resends the body (a client secret); both libraries keep
  everything on a redirect within the same host. So credentialed requests never follow one: the
  redirect answer becomes `redirect_refused`, an error naming where it pointed.
- A URL taken from an answer, such as a next-page path to append to the CRM's instance URL:
  appended blindly, `@evil.example/...` turns the instance's host into user info and sends the
  session id to evil.example. Such URLs are checked with `path_on` (`untrusted_url`).

The one mechanism per HTTP library: `PinnedSession` for requests (the ApexVerify client, CRM
clients built on requests, token requests), which also refuses any request off its origin;
`NO_REDIRECTS` for urllib3 (under generated OpenAPI clients). URLs that must go out without
credentials (pre-signed download links) are told apart with `same_origin`. Each CRM's package
says which it uses.
"""

from __future__ import annotations

import string
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests
import urllib3

from connector.errors import ConnectorError

DEFAULT_PORTS = {"http": 80, "https": 443}
# urllib3's own default (3 tries for connection and read failures), without following redirects:
# the 3xx answer is returned to the caller, which refuses it.
NO_REDIRECTS = urllib3.Retry(3, redirect=False)
_UNSAFE_CHARACTERS = frozenset(string.whitespace + "\\") | {chr(c) for c in range(32)} | {"\x7f"}


class RefusedDestination(ConnectorError):
    """A credentialed request that would have gone somewhere else than the configured service."""


def origin(url: str) -> tuple[str, str, int | None] | None:
    """(scheme, host, port) with the default port filled in; None for a URL without a usable origin."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if not parts.hostname or parts.username is not None or parts.password is not None:
        return None
    return scheme, parts.hostname.lower(), port or DEFAULT_PORTS.get(scheme)


def same_origin(url: str, base_url: str) -> bool:
    """Whether `url` is on the scheme, host and port of `base_url` (and carries no user info)."""
    here = origin(url)
    return here is not None and here == origin(base_url)


def describe_origin(url: str) -> str:
    """Where a URL points, for an error message: scheme://host[:port] only (no user info, path or query)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "an unreadable URL"
    if not parts.hostname:
        return "a URL without a host"
    scheme = f"{parts.scheme}:" if parts.scheme else ""
    return f"{scheme}//{parts.hostname}" + (f":{port}" if port else "")


def path_on(base_url: str, url: str, prefix: str, *, service: str, what: str) -> str:
    """`url` from an answer, as an absolute URL on `base_url`: a path under `prefix` (or a full URL of
    that origin). Anything else — another host, user info, `..`, control characters — is refused."""
    if any(character in _UNSAFE_CHARACTERS for character in url):
        raise untrusted_url(service, what, "it holds characters a URL path cannot")
    parts = urlsplit(url)
    if "@" in parts.netloc:
        raise untrusted_url(service, what, "it carries user info")
    if (parts.scheme or parts.netloc) and not same_origin(url, base_url):
        raise untrusted_url(
            service, what, f"it points to {describe_origin(url)}, not {describe_origin(base_url)}"
        )
    if not parts.path.startswith(prefix) or ".." in parts.path.split("/"):
        raise untrusted_url(service, what, f"it is not a path under {prefix}")
    return base_url.rstrip("/") + parts.path + (f"?{parts.query}" if parts.query else "")


def untrusted_url(service: str, what: str, why: str) -> RefusedDestination:
    return RefusedDestination(
        "untrusted_url", f"{service} answered a {what} the connector does not follow: {why}"
    )


def redirect_refused(service: str, status: int, location: str | None, setting: str) -> RefusedDestination:
    """The error for a redirect answer; `location` absolute (joined to the request's URL) or None."""
    target = f" to {describe_origin(location)}" if location else ""
    return RefusedDestination(
        "redirect_refused",
        f"{service} answered HTTP {status}, a redirect{target}; requests carrying credentials do not "
        f"follow redirects: check {setting}",
    )


class PinnedSession(requests.Session):
    """A requests session bound to one origin: nothing is sent elsewhere, no redirect is followed.

    `send` is the one place every request of a session passes (`request`, `get`, a client library's
    calls alike), so the checks sit there.
    """

    def __init__(self, base_url: str, *, service: str, setting: str) -> None:
        super().__init__()
        self.base_url = base_url
        self.service = service
        self.setting = setting

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        url = request.url or ""
        if not same_origin(url, self.base_url):
            raise RefusedDestination(
                "untrusted_url",
                f"refused to send {self.service} credentials to {describe_origin(url)}: "
                f"they go to {self.setting} only",
            )
        kwargs["allow_redirects"] = False
        response = super().send(request, **kwargs)
        if response.is_redirect:
            response.close()
            target = urljoin(url, response.headers["Location"])
            raise redirect_refused(self.service, response.status_code, target, self.setting)
        return response
