"""OAuth tokens kept fresh, one refresh at a time per connection across every worker.

A connection's tokens live in its `connections` row, sealed with CONNECTOR_SECRET_KEY
(connector/secretbox.py). `StoredTokens` hands a CRM client the access token and refreshes it
shortly before it expires (some CRMs' last 30 minutes) and after the CRM refused it (a 401:
some sessions end without notice). The row itself is the lock: a refresh runs under
`SELECT … FOR UPDATE`, so a second worker whose token was refused too waits for the first, sees a
token other than the one refused, and uses it instead of spending the refresh token again — no
lock that could outlive a crashed worker, and the new tokens are committed with the lock's release.

A refused refresh token (revoked, app uninstalled) puts the connection in `needs_reauth` and
raises a TransientError: the sync pauses with that reason instead of failing, and a new install
wakes it (pipeline/connections.py).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from connector.crm.base import Account, Crm, OAuthGrant, RefreshRefused
from connector.crm.registry import crm_named
from connector.errors import ConfigError, TransientError
from connector.logs import add_secret
from connector.models import Connection
from connector.runtime import Runtime
from connector.secretbox import SecretBox, require_secret_box

log = logging.getLogger(__name__)

# A token is refreshed when less than this much of its life is left (5 of a 30-minute token's),
# or a quarter of its life for shorter-lived tokens.
REFRESH_MARGIN_SECONDS = 300.0
# A sync paused for a re-install tries again after this long even if nobody installs (a new
# install wakes it at once).
NEEDS_REAUTH_RETRY_SECONDS = 3600.0

NEEDS_REAUTH = "connection_needs_reauth"
DISCONNECTED = "connection_disconnected"


def account_for(runtime: Runtime, connection: Connection) -> Account:
    """How a sync of `connection` reaches its CRM: the environment's credentials, or stored tokens."""
    if connection.auth != "oauth":
        return Account(connection_id=connection.id, external_id=connection.external_id)
    crm = crm_named(connection.crm)
    if crm is None or crm.oauth is None:
        raise ConfigError("unknown_crm", f"connection {connection.id} names a CRM without OAuth installs")
    return Account(
        connection_id=connection.id,
        external_id=connection.external_id,
        tokens=StoredTokens(runtime, connection.id, crm),
        instance_url=(connection.settings or {}).get("instance_url"),
    )


def seal_grant(box: SecretBox, grant: OAuthGrant, previous: dict[str, Any] | None = None) -> str:
    """The credentials column for a grant; a refresh that brings no refresh token keeps the old one."""
    refresh_token = grant.refresh_token or (previous or {}).get("refresh_token")
    add_secret(grant.access_token, refresh_token)
    return box.seal(
        {
            "access_token": grant.access_token,
            "refresh_token": refresh_token,
            "expires_at": grant.expires_at,
            "obtained_at": time.time(),
        }
    )


class StoredTokens:
    """A connection's tokens from its row: `access_token` and `refresh` (see the module docstring)."""

    def __init__(self, runtime: Runtime, connection_id: int, crm: Crm) -> None:
        assert crm.oauth is not None
        self.runtime = runtime
        self.connection_id = connection_id
        self.crm = crm
        self.oauth = crm.oauth
        self.box = require_secret_box(runtime.settings)
        self._held: dict[str, Any] | None = None
        self.refreshes = 0  # refreshes this instance did itself (for tests and logs)

    def access_token(self) -> str:
        held = self._held or self._read()
        if _expiring(held):
            held = self._refreshed(stale=held["access_token"])
        return str(held["access_token"])

    def refresh(self, refused: str) -> str:
        return str(self._refreshed(stale=refused)["access_token"])

    def _read(self) -> dict[str, Any]:
        with self.runtime.session() as session:
            self._held = self._open(session.get(Connection, self.connection_id))
        return self._held

    def _open(self, row: Connection | None) -> dict[str, Any]:
        if row is None or row.status == "disconnected" or not row.credentials:
            raise TransientError(
                DISCONNECTED,
                f"connection {self.connection_id} was disconnected; install it again to resume",
                retry_after=NEEDS_REAUTH_RETRY_SECONDS,
            )
        if row.status == "needs_reauth":
            raise _needs_reauth(self.connection_id, self.crm)
        return _opened(self.box, row.credentials)

    def _refreshed(self, stale: str) -> dict[str, Any]:
        """Under the row's lock: the token another worker just got, or a new one from the CRM."""
        refused: RefreshRefused | None = None
        with self.runtime.session() as session:
            row = session.get(Connection, self.connection_id, with_for_update=True, populate_existing=True)
            held = self._open(row)
            assert row is not None
            if held["access_token"] == stale or _expiring(held):
                try:
                    held = self._renew(row, held)
                except RefreshRefused as error:
                    row.status = "needs_reauth"
                    row.last_error = f"{error.code}: {error.message}"
                    refused = error
        if refused is not None:
            log.warning("connection_needs_reauth", extra={"connection_id": self.connection_id})
            raise _needs_reauth(self.connection_id, self.crm)
        self._held = held
        return held

    def _renew(self, row: Connection, held: dict[str, Any]) -> dict[str, Any]:
        grant = self.oauth.refresh(self.runtime.settings, str(held.get("refresh_token") or ""))
        row.credentials = seal_grant(self.box, grant, held)
        row.last_error = None
        self.refreshes += 1
        log.info("connection_token_refreshed", extra={"connection_id": self.connection_id})
        return _opened(self.box, row.credentials)


def _opened(box: SecretBox, sealed: str) -> dict[str, Any]:
    """The tokens, which from now on no log line of this process can carry."""
    held = box.open(sealed)
    add_secret(held.get("access_token"), held.get("refresh_token"))
    return held


def _expiring(held: dict[str, Any]) -> bool:
    expires_at = held.get("expires_at")
    if expires_at is None:
        return False
    lifetime = float(expires_at) - float(held.get("obtained_at") or 0)
    margin = min(REFRESH_MARGIN_SECONDS, max(lifetime, 0) / 4)
    return float(expires_at) - time.time() < margin


def _needs_reauth(connection_id: int, crm: Crm) -> TransientError:
    return TransientError(
        NEEDS_REAUTH,
        f"{crm.label} refused the refresh token of connection {connection_id}: "
        "install it again from the ops page to resume",
        retry_after=NEEDS_REAUTH_RETRY_SECONDS,
    )
