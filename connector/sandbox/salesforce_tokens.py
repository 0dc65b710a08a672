"""What the Salesforce sandbox's OAuth web-server flow remembers, for every org: authorization codes
(single use, 15 minutes, bound to client, redirect URI and PKCE challenge), access tokens that
expire (`token_ttl` seconds, monotonic clock) or are revoked, refresh tokens (kept across refreshes,
as Salesforce keeps them) that can be revoked, and counts per org. Guarded by the org directory's
lock (salesforce_orgs.py); the HTTP side is salesforce_oauth.py.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

from connector.sandbox.salesforce_ids import to_org_id

CODE_LIFETIME = 15 * 60.0  # Salesforce: an authorization code expires after 15 minutes
DEFAULT_TOKEN_TTL = 7200.0  # the default session timeout: two hours
DEFAULT_SCOPE = "api refresh_token"
REFRESH_SCOPES = {"refresh_token", "offline_access", "full"}
COUNT_NAMES = ("code_grants", "refreshes", "revoked", "refused_refreshes", "expired_rejections")
SETTINGS = ("next_account", "deny_next", "token_ttl_seconds", "expire_tokens", "revoke_refresh_tokens")
EXPIRED_GRANT = "expired access/refresh token"


class GrantRefused(Exception):
    """A token request Salesforce refuses with 400 invalid_grant; the message is its error_description."""


@dataclass
class AuthCode:
    org_id: str
    client_id: str
    redirect_uri: str
    challenge: str
    scope: str
    expires_at: float


@dataclass
class AccessToken:
    org_id: str
    expires_at: float
    refresh_token: str | None
    revoked: bool = False


@dataclass
class RefreshToken:
    org_id: str
    client_id: str
    scope: str
    revoked: bool = False


@dataclass
class Issued:
    """What a token answer tells: the org, a new access token, the refresh token (code grants only)."""

    org_id: str
    access_token: str
    refresh_token: str | None
    scope: str


def pkce_challenge(verifier: str) -> str:
    """S256: the base64url (unpadded) SHA-256 of the code verifier."""
    digest = hashlib.sha256(verifier.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _same(one: str, other: str) -> bool:
    return hmac.compare_digest(one.encode(), other.encode())


def access_token_for(org_id: str) -> str:
    """A session id as Salesforce shapes them: the 15-character org id, '!', then opaque characters."""
    return f"{org_id[:15]}!{secrets.token_urlsafe(48)}"


class OAuthBook:
    def __init__(self, default_org: str) -> None:
        self.default_org = default_org
        self.next_account = default_org  # the org the next consent is for
        self.deny_next = False
        self.token_ttl = DEFAULT_TOKEN_TTL
        self.codes: dict[str, AuthCode] = {}
        self.access: dict[str, AccessToken] = {}
        self.refresh: dict[str, RefreshToken] = {}
        self.counts: defaultdict[str, Counter[str]] = defaultdict(Counter)

    # ---- the flow ----

    def take_denial(self) -> bool:
        """True (once) when the control asked for the next consent to be denied."""
        denied, self.deny_next = self.deny_next, False
        return denied

    def new_code(self, client_id: str, redirect_uri: str, challenge: str, scope: str) -> str:
        code = "aPrx" + secrets.token_urlsafe(32)
        expires_at = time.monotonic() + CODE_LIFETIME
        self.codes[code] = AuthCode(self.next_account, client_id, redirect_uri, challenge, scope, expires_at)
        return code

    def redeem(self, code: str, client_id: str, redirect_uri: str, verifier: str) -> Issued:
        """Exchange a code (used up by any attempt, good or not) for tokens of its org."""
        found = self.codes.pop(code, None)
        if found is None or found.expires_at <= time.monotonic():
            raise GrantRefused("expired authorization code")
        if not _same(found.client_id, client_id):
            raise GrantRefused("authentication failure")
        if found.redirect_uri != redirect_uri:
            raise GrantRefused("redirect_uri must match configuration")
        if not _same(pkce_challenge(verifier), found.challenge):
            raise GrantRefused("invalid code verifier")
        self.counts[found.org_id]["code_grants"] += 1
        refresh_token = None
        if REFRESH_SCOPES & set(found.scope.split()):
            refresh_token = "5Aep" + secrets.token_urlsafe(48)
            self.refresh[refresh_token] = RefreshToken(found.org_id, client_id, found.scope)
        return Issued(found.org_id, self._issue(found.org_id, refresh_token), refresh_token, found.scope)

    def renew(self, refresh_token: str, client_id: str) -> Issued:
        """A new access token for a refresh token's org; the refresh token stays the same."""
        found = self.refresh.get(refresh_token)
        if found is None:
            raise GrantRefused(EXPIRED_GRANT)
        if found.revoked or not _same(found.client_id, client_id):
            self.counts[found.org_id]["refused_refreshes"] += 1
            raise GrantRefused(EXPIRED_GRANT)
        self.counts[found.org_id]["refreshes"] += 1
        return Issued(found.org_id, self._issue(found.org_id, refresh_token), None, found.scope)

    def _issue(self, org_id: str, refresh_token: str | None) -> str:
        """A new access token of the org, living token_ttl seconds (and revoked with its refresh token)."""
        token = access_token_for(org_id)
        self.access[token] = AccessToken(org_id, time.monotonic() + self.token_ttl, refresh_token)
        return token

    def revoke(self, token: str) -> bool:
        """Revoke a refresh token (and the access tokens it issued) or one access token; False if unknown."""
        found = self.refresh.get(token) or self.access.get(token)
        if found is None:
            return False
        found.revoked = True
        if isinstance(found, RefreshToken):
            for access in self.access.values():
                access.revoked = access.revoked or access.refresh_token == token
        self.counts[found.org_id]["revoked"] += 1
        return True

    # ---- sessions ----

    def org_of(self, token: str) -> str | None:
        """The org a code, refresh token or access token belongs to (good or not); None if unknown."""
        found = self.codes.get(token) or self.refresh.get(token) or self.access.get(token)
        return found.org_id if found is not None else None

    def accepts(self, token: str) -> bool:
        """True for an OAuth access token neither revoked nor expired (an expired one is counted)."""
        found = self.access[token]
        if found.revoked:
            return False
        if found.expires_at <= time.monotonic():
            self.counts[found.org_id]["expired_rejections"] += 1
            return False
        return True

    # ---- the control (POST /_sandbox/oauth) ----

    def configure(self, org_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """Check every setting first, then apply them all; expiries and revocations hit `org_id`."""
        unknown = sorted(set(body) - set(SETTINGS))
        if unknown:
            raise ValueError(f"unknown settings {unknown}; known: {list(SETTINGS)}")
        next_account = self._next_account(body.get("next_account", self.next_account))
        ttl = body.get("token_ttl_seconds", self.token_ttl)
        if isinstance(ttl, bool) or not isinstance(ttl, int | float) or ttl <= 0:
            raise ValueError("token_ttl_seconds must be a positive number")
        flags = {
            name: body.get(name, False) for name in ("deny_next", "expire_tokens", "revoke_refresh_tokens")
        }
        if not all(isinstance(value, bool) for value in flags.values()):
            raise ValueError(f"{sorted(flags)} must be true or false")
        self.next_account, self.token_ttl = next_account, float(ttl)
        self.deny_next = self.deny_next or flags["deny_next"]
        expired = self._expire(org_id) if flags["expire_tokens"] else 0
        revoked = self._revoke_refresh_tokens(org_id) if flags["revoke_refresh_tokens"] else 0
        return {**self.settings(), "expired_tokens": expired, "revoked_refresh_tokens": revoked}

    def _next_account(self, raw: Any) -> str:
        return self.default_org if raw is None else to_org_id(raw)

    def _expire(self, org_id: str) -> int:
        now = time.monotonic()
        live = [
            token
            for token in self.access.values()
            if token.org_id == org_id and not token.revoked and token.expires_at > now
        ]
        for token in live:
            token.expires_at = float("-inf")
        return len(live)

    def _revoke_refresh_tokens(self, org_id: str) -> int:
        live = [token for token in self.refresh.values() if token.org_id == org_id and not token.revoked]
        for token in live:
            token.revoked = True
        return len(live)

    def settings(self) -> dict[str, Any]:
        return {
            "next_account": self.next_account,
            "deny_next": self.deny_next,
            "token_ttl_seconds": self.token_ttl,
        }

    def counts_of(self, org_id: str) -> dict[str, int]:
        counts = self.counts[org_id]
        return {name: counts[name] for name in COUNT_NAMES}
