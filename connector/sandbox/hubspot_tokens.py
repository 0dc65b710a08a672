"""The HubSpot sandbox's OAuth bookkeeping: authorization codes, access and refresh tokens, per portal.

Pure state behind one lock; connector/sandbox/hubspot_oauth.py serves it over HTTP and
connector/sandbox/hubspot_control.py's /_sandbox/oauth steers it. Times come from `clock`
(wall-clock seconds), so access tokens really expire.

As HubSpot does: a code is single use, lives 10 minutes and is bound to its redirect_uri and
client; a refresh issues a new access token and keeps the refresh token; a deleted refresh token
is refused from then on (access tokens already issued stay valid until they expire).
"""

from __future__ import annotations

import math
import secrets
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

CODE_TTL_SECONDS = 600
DEFAULT_TOKEN_TTL_SECONDS = 1800
APP_ID = 1_234_567
USER_ID = 7_654_321
USER = "sandbox-user@example.com"
DEFAULT_SCOPES = ("oauth",)
# GET /_sandbox/oauth: per portal, in this order.
COUNT_NAMES = ("code_grants", "refreshes", "revoked", "refused_refreshes", "expired_rejections")


class OAuthRefusal(Exception):
    """A 400 from the token endpoint: `status` is HubSpot's code (BAD_AUTH_CODE, BAD_REFRESH_TOKEN...)."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    def body(self) -> dict[str, Any]:
        # HubSpot's OAuth errors carry the code in `status`; `category` and `correlationId` make
        # the body the specs' Error too.
        return {
            "status": self.status,
            "message": self.message,
            "correlationId": str(uuid.uuid4()),
            "category": self.status,
        }


@dataclass(frozen=True)
class Grant:
    """What a code, an access token or a refresh token was issued for."""

    account: str
    client_id: str
    scopes: tuple[str, ...]


@dataclass
class AuthCode:
    grant: Grant
    redirect_uri: str
    expires_at: float


@dataclass
class AccessToken:
    grant: Grant
    refresh_token: str
    expires_at: float


@dataclass
class RefreshToken:
    grant: Grant
    revoked: bool = False


@dataclass(frozen=True)
class Issued:
    access_token: str
    refresh_token: str
    expires_in: int  # whole seconds, rounded up
    grant: Grant


@dataclass
class OAuthSettings:
    """What POST /_sandbox/oauth changes (besides expiring and revoking tokens)."""

    next_account: str
    deny_next: bool = False
    token_ttl_seconds: float = DEFAULT_TOKEN_TTL_SECONDS


@dataclass
class OAuthAuthority:
    """The sandbox's OAuth server. `client_id`/`client_secret`: the app's, checked when set."""

    default_account: str
    client_id: str | None = None
    client_secret: str | None = field(default=None, repr=False)
    clock: Callable[[], float] = time.time

    def __post_init__(self) -> None:
        self.lock = threading.Lock()
        self.settings = OAuthSettings(next_account=self.default_account)
        self._codes: dict[str, AuthCode] = {}
        self._access: dict[str, AccessToken] = {}
        self._refresh: dict[str, RefreshToken] = {}
        self._counts: defaultdict[str, Counter[str]] = defaultdict(Counter)

    # ---- consent ------------------------------------------------------------------------------

    def consent_problem(self, client_id: str, redirect_uri: str) -> str | None:
        """Why the consent page refuses this request (it then shows an error page), or None."""
        if not client_id or (self.client_id is not None and client_id != self.client_id):
            return f"unknown client_id {client_id!r}"
        if not redirect_uri:
            return "redirect_uri is missing"
        return None

    def authorize(self, client_id: str, redirect_uri: str, scopes: tuple[str, ...]) -> str | None:
        """A code for the next account's consent, or None when this consent is denied (deny_next)."""
        with self.lock:
            if self.settings.deny_next:
                self.settings.deny_next = False
                return None
            code = str(uuid.uuid4())
            grant = Grant(self.settings.next_account, client_id, scopes or DEFAULT_SCOPES)
            self._codes[code] = AuthCode(grant, redirect_uri, self.clock() + CODE_TTL_SECONDS)
            return code

    # ---- the token endpoint -------------------------------------------------------------------

    def token(self, fields: Mapping[str, str]) -> Issued:
        """POST /oauth/v1/token with these form fields; OAuthRefusal says why not."""
        grant_type = fields.get("grant_type", "")
        if grant_type not in ("authorization_code", "refresh_token"):
            raise OAuthRefusal("BAD_GRANT_TYPE", f"unsupported grant_type {grant_type!r}")
        self._check_client(fields.get("client_id", ""), fields.get("client_secret", ""))
        with self.lock:
            if grant_type == "authorization_code":
                return self._exchange(fields.get("code", ""), fields.get("redirect_uri", ""), fields)
            return self._refresh_grant(fields.get("refresh_token", ""))

    def _check_client(self, client_id: str, client_secret: str) -> None:
        if not client_id or (self.client_id is not None and client_id != self.client_id):
            raise OAuthRefusal("BAD_CLIENT_ID", "missing or unknown client id")
        if self.client_secret is not None and client_secret != self.client_secret:
            raise OAuthRefusal("BAD_CLIENT_ID", "client_secret does not match the app's")

    def _exchange(self, code: str, redirect_uri: str, fields: Mapping[str, str]) -> Issued:
        held = self._codes.get(code)
        if held is None or held.expires_at <= self.clock():
            self._codes.pop(code, None)
            raise OAuthRefusal("BAD_AUTH_CODE", "missing or unknown auth code")
        if held.redirect_uri != redirect_uri:
            raise OAuthRefusal("BAD_REDIRECT_URI", "redirect_uri is not the one the code was issued for")
        if held.grant.client_id != fields.get("client_id"):
            raise OAuthRefusal("BAD_CLIENT_ID", "the code was issued to another client")
        del self._codes[code]
        refresh_token = str(uuid.uuid4())
        self._refresh[refresh_token] = RefreshToken(held.grant)
        self._counts[held.grant.account]["code_grants"] += 1
        return self._issue(held.grant, refresh_token)

    def _refresh_grant(self, refresh_token: str) -> Issued:
        held = self._refresh.get(refresh_token)
        if held is None:
            raise OAuthRefusal("BAD_REFRESH_TOKEN", "missing or unknown refresh token")
        if held.revoked:
            self._counts[held.grant.account]["refused_refreshes"] += 1
            raise OAuthRefusal("BAD_REFRESH_TOKEN", "the refresh token was revoked")
        self._counts[held.grant.account]["refreshes"] += 1
        return self._issue(held.grant, refresh_token)

    def _issue(self, grant: Grant, refresh_token: str) -> Issued:
        ttl = self.settings.token_ttl_seconds
        access_token = "CO" + secrets.token_urlsafe(48)
        self._access[access_token] = AccessToken(grant, refresh_token, self.clock() + ttl)
        return Issued(access_token, refresh_token, math.ceil(ttl), grant)

    # ---- tokens in use ------------------------------------------------------------------------

    def access(self, token: str) -> AccessToken | None:
        """The access token `token` if this server issued it (expired or not)."""
        with self.lock:
            return self._access.get(token)

    def expired_for(self, token: AccessToken) -> float | None:
        """Seconds since `token` expired, or None while it is valid."""
        overdue = self.clock() - token.expires_at
        return overdue if overdue >= 0 else None

    def seconds_left(self, token: AccessToken) -> int:
        return max(0, int(token.expires_at - self.clock()))

    def count_expired_rejection(self, token: AccessToken) -> None:
        with self.lock:
            self._counts[token.grant.account]["expired_rejections"] += 1

    def refresh_token(self, token: str) -> RefreshToken | None:
        with self.lock:
            return self._refresh.get(token)

    def revoke(self, token: str) -> bool:
        """DELETE /oauth/v1/refresh-tokens/<token>: False when the token is unknown."""
        with self.lock:
            held = self._refresh.get(token)
            if held is None:
                return False
            if not held.revoked:
                held.revoked = True
                self._counts[held.grant.account]["revoked"] += 1
            return True

    # ---- control (/_sandbox/oauth) ------------------------------------------------------------

    def configure(self, changes: Mapping[str, Any]) -> dict[str, Any]:
        """Apply next_account / deny_next / token_ttl_seconds (already checked); the settings."""
        with self.lock:
            for name, value in changes.items():
                setattr(self.settings, name, value)
            return dict(vars(self.settings))

    def expire_all(self, account: str) -> int:
        """Every unexpired access token of `account` expires now; how many did."""
        with self.lock:
            now = self.clock()
            live = [t for t in self._access.values() if t.grant.account == account and t.expires_at > now]
            for token in live:
                token.expires_at = now
            return len(live)

    def revoke_all(self, account: str) -> int:
        """Every refresh token of `account` is refused from now on; how many were live."""
        with self.lock:
            live = [t for t in self._refresh.values() if t.grant.account == account and not t.revoked]
            for token in live:
                token.revoked = True
            return len(live)

    def counts(self, account: str) -> dict[str, int]:
        with self.lock:
            return {name: self._counts[account][name] for name in COUNT_NAMES}
