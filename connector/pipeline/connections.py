"""Connections installed by OAuth: the install flow, disconnect, webhook routing and key rotation.

An install is two requests of the same signed-in ops session. `begin_install` makes a random
`state` (and a PKCE verifier where the CRM wants one), keeps them in Redis for 10 minutes under
the SHA-256 of the state, bound to the session, and answers with the CRM's consent page.
`finish_install` takes the callback's query: the state must be the one this session was given
for this CRM, and is consumed before the code is exchanged, so a replayed callback is refused.
The account (portal, org) is the one the CRM's token endpoint names, never one the browser says;
installing it again updates its connection rather than making a second one.

Tokens are stored sealed with CONNECTOR_SECRET_KEY (connector/secretbox.py); a connection whose
CRM routes deliveries by a secret of their own (`Crm.routes_by_secret`) gets one at its first
install, returned once and stored only as its SHA-256.

`ConnectionDirectory` routes webhook deliveries to connections. It runs on every webhook, so it
reads the connections of a CRM once per process and keeps them until an install or a disconnect
anywhere changes the version kept in Redis (`connector:connections:version`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import re
import secrets
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import redis
from sqlalchemy import or_, select

from connector.crm.base import Crm, OAuthApp
from connector.crm.registry import CRMS, crm_named
from connector.crm.tokens import DISCONNECTED, NEEDS_REAUTH, seal_grant
from connector.db import dialect_insert
from connector.errors import ConfigError, ConnectorError, InputError, NotFoundError
from connector.logs import add_secret
from connector.models import Connection, Sync, utcnow
from connector.pipeline.intake import crm_connection, webhook_connection
from connector.pipeline.jobs import schedule_step
from connector.runtime import Runtime
from connector.secretbox import SecretBox, require_secret_box, secret_box
from connector.states import RUNNABLE_VALUES

log = logging.getLogger(__name__)

STATE_TTL_SECONDS = 600
STATE_KEY = "connector:oauth_state:{}"
# Changed (to a new random value) by every install and disconnect: directories reload then.
VERSION_KEY = "connector:connections:version"
LIVE = ("connected", "needs_reauth")


class InstallRefused(ConnectorError):
    """An install callback that stored nothing: consent_denied, state_invalid or exchange_refused."""

    http_status = 400


class ConnectionStateError(ConnectorError):
    """The connection is not in a state that allows the action (an env connection cannot be disconnected)."""

    http_status = 409


@dataclass(frozen=True)
class Installed:
    connection: Connection  # detached
    webhook_secret: str | None  # the new connection's webhook secret, shown once (routes_by_secret CRMs)
    created: bool


# ---- install ----------------------------------------------------------------------------------------


def oauth_crm(crm_name: str) -> tuple[Crm, OAuthApp]:
    """The CRM and its OAuth app; NotFoundError for an unknown CRM or one without OAuth installs."""
    crm = crm_named(crm_name)
    if crm is None or crm.oauth is None:
        raise NotFoundError("not_found", f"{crm_name} cannot be connected by OAuth")
    return crm, crm.oauth


def install_unavailable(runtime: Runtime, crm_name: str) -> str | None:
    """Why `crm_name` cannot be installed now (the unset variables), or None when it can."""
    crm, oauth = oauth_crm(crm_name)
    reasons = []
    if missing := oauth.missing(runtime.settings):
        reasons.append(missing)
    if not runtime.settings.secret_key:
        reasons.append("CONNECTOR_SECRET_KEY is not set, so OAuth tokens cannot be stored")
    return "; ".join(reasons) or None


def begin_install(runtime: Runtime, crm_name: str, binding: str, redirect_uri: str) -> str:
    """The URL of the CRM's consent page for a new install by the session `binding` names."""
    crm, oauth = oauth_crm(crm_name)
    if why := install_unavailable(runtime, crm_name):
        raise ConfigError("oauth_not_configured", f"{crm.label} cannot be connected: {why}")
    require_secret_box(runtime.settings)  # a malformed key is refused now, not after the consent
    if not binding:
        raise ValueError("an install is bound to the session that starts it: binding is empty")
    state = secrets.token_urlsafe(32)
    verifier = secrets.token_urlsafe(64) if oauth.pkce else None
    held = {
        "crm": crm.name,
        "binding": _digest(binding),
        "verifier": verifier,
        "redirect_uri": redirect_uri,
    }
    runtime.redis.set(STATE_KEY.format(_digest(state)), json.dumps(held), ex=STATE_TTL_SECONDS)
    challenge = _challenge(verifier) if verifier else None
    return oauth.authorize_url(runtime.settings, redirect_uri, state, challenge)


def finish_install(runtime: Runtime, crm_name: str, binding: str, args: Mapping[str, str]) -> Installed:
    """The connection the callback's code installs; InstallRefused (nothing stored) otherwise."""
    crm, oauth = oauth_crm(crm_name)
    held = _take_state(runtime, crm.name, binding, args.get("state") or "")
    if args.get("error"):
        error = args.get("error") or ""
        said = f" ({error})" if re.fullmatch(r"[a-z_]{1,40}", error) else ""
        raise InstallRefused(
            "consent_denied",
            f"{crm.label} access was not granted{said}: nothing was connected. "
            "Connect again and approve the access to install it.",
        )
    if held is None:
        raise InstallRefused(
            "state_invalid",
            "this install link is not valid: it is older than 10 minutes, was already used, or was "
            "started by another session. Nothing was connected; start again from the ops page.",
        )
    box = require_secret_box(runtime.settings)
    code = args.get("code") or ""
    if not code:
        raise InstallRefused(
            "exchange_refused", f"{crm.label} sent no authorization code: nothing was connected"
        )
    try:
        grant = oauth.exchange_code(runtime.settings, code, held["redirect_uri"], held.get("verifier"))
    except ConnectorError as error:  # the OAuth clients' messages never carry a token
        raise InstallRefused(
            "exchange_refused", f"{crm.label} install failed: {error.message} (nothing was connected)"
        ) from None
    if not grant.account_id:
        raise InstallRefused(
            "exchange_refused", f"{crm.label} did not say which account was installed: nothing was connected"
        )
    installed = _store_grant(runtime, crm, box, grant)
    _bump_version(runtime)
    woken = wake_paused_syncs(runtime, installed.connection.id)
    log.info(
        "connection_installed",
        extra={
            "connection_id": installed.connection.id,
            "crm": crm.name,
            "new_connection": installed.created,
            "syncs_woken": woken,
        },
    )
    return installed


def _take_state(runtime: Runtime, crm_name: str, binding: str, state: str) -> dict[str, Any] | None:
    """The install the state was made for, consumed: only by the session and CRM it was made for."""
    if not state or len(state) > 200 or not binding:
        return None
    key = STATE_KEY.format(_digest(state))
    raw = runtime.redis.get(key)
    held = _loads(raw)
    if held is None or held.get("crm") != crm_name:
        return None
    if not hmac.compare_digest(str(held.get("binding")), _digest(binding)):
        return None  # another session's state: left for its own callback
    if runtime.redis.getdel(key) is None:  # single use: a concurrent callback took it first
        return None
    return held


def _loads(raw: Any) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        found = json.loads(raw)
    except ValueError:
        return None
    return found if isinstance(found, dict) else None


def _store_grant(runtime: Runtime, crm: Crm, box: SecretBox, grant: Any) -> Installed:
    """Create or update the connection of the grant's account, all in one transaction."""
    account = crm.same_account(grant.account_id)
    webhook_secret = None
    with runtime.session() as session:
        rows = session.scalars(select(Connection).where(Connection.crm == crm.name)).all()
        found = next((row for row in rows if crm.same_account(row.external_id) == account), None)
        created = False
        if found is None:
            now = utcnow()
            inserted = session.scalar(
                dialect_insert(session, Connection)
                .values(crm=crm.name, external_id=grant.account_id, name=_name(crm, grant), settings={},
                        auth="oauth", status="connected", created_at=now, updated_at=now)
                .on_conflict_do_nothing(index_elements=["crm", "external_id"])
                .returning(Connection.id)
            )  # fmt: skip
            created = inserted is not None
            found_id = session.scalars(
                select(Connection.id).where(
                    Connection.crm == crm.name, Connection.external_id == grant.account_id
                )
            ).one()
        else:
            found_id = found.id
        row = session.get(Connection, found_id, with_for_update=True, populate_existing=True)
        assert row is not None
        previous = _opened(box, row.credentials)
        row.auth = "oauth"
        row.status = "connected"
        row.last_error = None
        row.credentials = seal_grant(box, grant, previous)
        if grant.account_name:
            row.name = grant.account_name[:255]
        settings = dict(row.settings or {})
        settings.setdefault("default_country", runtime.settings.default_country)
        if grant.instance_url:
            settings["instance_url"] = grant.instance_url
        row.settings = settings
        if crm.routes_by_secret and row.webhook_secret_digest is None:
            webhook_secret = secrets.token_urlsafe(32)
            add_secret(webhook_secret)
            row.webhook_secret_digest = _digest(webhook_secret)
        row.updated_at = utcnow()
        session.flush()
        session.expunge(row)
    return Installed(connection=row, webhook_secret=webhook_secret, created=created)


def _name(crm: Crm, grant: Any) -> str:
    return str(grant.account_name or f"{crm.label} {grant.account_id}")[:255]


def _opened(box: SecretBox, sealed: str | None) -> dict[str, Any] | None:
    if not sealed:
        return None
    try:
        return box.open(sealed)
    except ConfigError:  # sealed under a key no longer configured: the new grant replaces it
        return None


# ---- disconnect, listing ----------------------------------------------------------------------------


def disconnect(runtime: Runtime, connection_id: int) -> Connection:
    """Forget the connection's tokens (revoking its refresh token at the CRM first) and stop its
    schedules. A failed revocation is recorded in `last_error`; the tokens are forgotten anyway."""
    with runtime.session() as session:
        row = session.get(Connection, connection_id, with_for_update=True)
        if row is None:
            raise NotFoundError("connection_not_found", f"connection {connection_id} does not exist")
        crm = crm_named(row.crm)
        if row.auth != "oauth" or crm is None or crm.oauth is None:
            raise ConnectionStateError("env_connection", _env_refusal(runtime, row, crm))
        sealed = row.credentials
        already = row.status == "disconnected"
        if not already:
            row.status = "disconnected"
            row.credentials = None
            row.last_error = None
            row.updated_at = utcnow()
    if already:
        return get_connection(runtime, connection_id)
    _bump_version(runtime)
    problem = _revoke(runtime, crm, crm.oauth, sealed)
    if problem is not None:
        with runtime.session() as session:
            stored = session.get(Connection, connection_id)
            assert stored is not None
            stored.last_error = problem
    log.info("connection_disconnected", extra={"connection_id": connection_id, "revoked": problem is None})
    return get_connection(runtime, connection_id)


def _revoke(runtime: Runtime, crm: Crm, oauth: OAuthApp, sealed: str | None) -> str | None:
    """Revoke the refresh token at the CRM; what went wrong (for last_error), or None."""
    box = secret_box(runtime.settings)
    if not sealed:
        return None
    if box is None:
        return (
            "not revoked at the CRM: CONNECTOR_SECRET_KEY is not set, so the stored token could not be read"
        )
    held = _opened(box, sealed)
    token = (held or {}).get("refresh_token") or (held or {}).get("access_token")
    if not token:
        return "not revoked at the CRM: the stored token could not be read with CONNECTOR_SECRET_KEY"
    try:
        oauth.revoke(runtime.settings, str(token))
    except ConnectorError as error:
        return f"not revoked at {crm.label}: {error.message}"
    except Exception as error:  # the disconnect stands whatever the CRM did; the tokens are forgotten
        log.warning("connection_revoke_failed", extra={"crm": crm.name, "error": type(error).__name__})
        return f"not revoked at {crm.label}: {type(error).__name__}"
    return None


# The variables that make an env connection (the OAuth app's own, shared by every install, are not).
ENV_CONNECTION_FIELDS = ("access_token", "instance_url", "portal_id", "org_id", "webhook_token")


def _env_refusal(runtime: Runtime, row: Connection, crm: Crm | None) -> str:
    label = crm.label if crm else row.crm
    names: list[str] = []
    if crm is not None:
        declared = {f.name: str(f.metadata["env"]) for f in fields(crm.settings) if f.metadata.get("env")}
        wanted = [declared[name] for name in ENV_CONNECTION_FIELDS if name in declared]
        names = [name for name in wanted if runtime.settings.env.get(name)] or wanted
    variables = f" ({', '.join(names)})" if names else ""
    return (
        f"connection {row.id} is the {label} env connection: its credentials come from the environment, "
        f"so it cannot be disconnected here; remove its environment variables{variables} to stop using it"
    )


def list_connections(runtime: Runtime) -> list[Connection]:
    """Every connection, oldest first (detached); the env connection of each CRM configured by the
    environment is listed even before anything used it."""
    for crm in CRMS.values():
        if crm.env_configured(runtime.settings):
            webhook_connection(runtime, crm.name)  # its row, created once per process
    with runtime.session() as session:
        rows = list(session.scalars(select(Connection).where(Connection.crm.in_(list(CRMS)))
                                    .order_by(Connection.id)))  # fmt: skip
        session.expunge_all()
    return rows


def get_connection(runtime: Runtime, connection_id: int) -> Connection:
    with runtime.session() as session:
        row = session.get(Connection, connection_id)
        if row is None or crm_named(row.crm) is None:  # the file source's row is no CRM connection
            raise NotFoundError("connection_not_found", f"connection {connection_id} does not exist")
        session.expunge(row)
    return row


def connection_json(connection: Connection, base_url: str | None = None) -> dict[str, Any]:
    """A connection for the admin API and the ops page: never a token or a secret."""
    base = (base_url or "").rstrip("/")
    return {
        "id": connection.id,
        "crm": connection.crm,
        "external_id": connection.external_id,
        "name": connection.name,
        "auth": connection.auth,
        "status": connection.status,
        "last_error": connection.last_error,
        "created_at": _iso(connection.created_at),
        "updated_at": _iso(connection.updated_at or connection.created_at),
        "webhook_url": f"{base}/webhooks/{connection.crm}",
    }


def _iso(moment: Any) -> str | None:
    return moment.isoformat() if moment is not None else None


# ---- segments: which connection ---------------------------------------------------------------------


def live_connections(runtime: Runtime, crm_name: str) -> list[Connection]:
    """The connections of `crm_name` a segment may use, oldest first (detached): those installed and
    not disconnected, and the env connection when the environment configures one (or when nothing
    was installed: the single-connection setup, as before installs existed)."""
    crm = crm_named(crm_name)
    with runtime.session() as session:
        rows = list(
            session.scalars(
                select(Connection)
                .where(Connection.crm == crm_name, Connection.status.in_(LIVE), Connection.auth == "oauth")
                .order_by(Connection.id)
            )
        )
        session.expunge_all()
    if crm is None or crm.env_configured(runtime.settings) or not rows:
        env = crm_connection(runtime, crm_name)
        if env.status != "disconnected" and all(row.id != env.id for row in rows):
            rows = sorted([*rows, env], key=lambda row: row.id)
    return rows


def segment_connection(runtime: Runtime, crm_name: str, connection_id: Any = None) -> Connection:
    """The connection a segment of `crm_name` syncs through: `connection_id` checked, else the only one."""
    if connection_id is None:
        live = live_connections(runtime, crm_name)
        if len(live) == 1:
            return live[0]
        ids = ", ".join(str(row.id) for row in live)
        raise InputError(
            "connection_required",
            f"{crm_name} has {len(live)} connections: give connection_id, one of {ids}",
            details={"connection_ids": [row.id for row in live]},
        )
    if (
        isinstance(connection_id, bool)
        or not isinstance(connection_id, int)
        or not 1 <= connection_id < 2**63
    ):
        raise InputError("invalid_connection_id", "connection_id must be the integer id of a connection")
    with runtime.session() as session:
        row = session.get(Connection, connection_id)
        if row is not None:
            session.expunge(row)
    if row is None or row.crm != crm_name:
        raise InputError("invalid_connection_id", f"connection {connection_id} is no {crm_name} connection")
    if row.status == "disconnected":
        raise InputError(
            "invalid_connection_id", f"connection {connection_id} is disconnected: install it again first"
        )
    return row


# ---- waking paused syncs, rotating keys ------------------------------------------------------------


def wake_paused_syncs(runtime: Runtime, connection_id: int) -> int:
    """Run now the syncs of the connection paused for a re-install; how many there were."""
    with runtime.session() as session:
        ids = list(
            session.scalars(
                select(Sync.id).where(
                    Sync.connection_id == connection_id,
                    Sync.status.in_(RUNNABLE_VALUES),
                    or_(
                        Sync.pause_reason.startswith(NEEDS_REAUTH, autoescape=True),
                        Sync.pause_reason.startswith(DISCONNECTED, autoescape=True),
                    ),
                )
            )
        )
    for sync_id in ids:
        schedule_step(runtime, sync_id)
    return len(ids)


def rotate_keys(runtime: Runtime) -> int:
    """Re-encrypt every stored token under the first key of CONNECTOR_SECRET_KEY; how many rows."""
    box = require_secret_box(runtime.settings)
    with runtime.session() as session:
        ids = list(session.scalars(select(Connection.id).where(Connection.credentials.is_not(None))))
    done = 0
    for connection_id in ids:
        with runtime.session() as session:  # one row at a time, locked: a refresh may be writing it
            row = session.get(Connection, connection_id, with_for_update=True, populate_existing=True)
            if row is None or not row.credentials:
                continue
            try:
                row.credentials = box.reseal(row.credentials)
            except ConfigError as error:
                raise ConfigError(error.code, f"connection {connection_id}: {error.message}") from None
            done += 1
    return done


# ---- webhook routing --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Row:
    id: int
    external_id: str
    account: str  # external_id in the CRM's same_account form
    auth: str
    status: str
    digest: str | None


class ConnectionDirectory:
    """The connections of one CRM, for routing its webhook deliveries (crm.base.AccountDirectory).

    An account of a connection not disconnected routes to it; the env connection takes deliveries
    naming the environment's account, those naming none, and — while nothing was ever installed
    for this CRM and the environment names no account — any account, as before installs existed.
    """

    def __init__(self, runtime: Runtime, crm: Crm | str) -> None:
        found = crm_named(crm) if isinstance(crm, str) else crm
        if found is None:
            raise NotFoundError("not_found", f"no CRM named {crm}")
        self.runtime = runtime
        self.crm = found
        self._loaded: list[_Row] | None = None

    def connection_of(self, account_id: str | None) -> int | None:
        rows = self._rows()
        same = self.crm.same_account
        env_account = self.crm.account_id(self.runtime.settings)
        env_key = same(env_account) if env_account else None
        if account_id is not None:
            key = same(str(account_id))
            for row in rows:
                if row.account == key:
                    return row.id if row.status != "disconnected" else None
            if key == env_key or (env_key is None and self._never_installed(rows)):
                return self._env_connection(rows)
            return None
        if self.crm.env_configured(self.runtime.settings) or self._never_installed(rows):
            return self._env_connection(rows)
        return None

    def connection_with_secret(self, secret: str) -> tuple[int, str] | None:
        if not secret:
            return None
        digest = _digest(secret)
        for row in self._rows():
            if row.digest is not None and hmac.compare_digest(row.digest, digest):
                return (row.id, row.external_id) if row.status != "disconnected" else None
        return None

    def has_secrets(self) -> bool:
        return any(row.digest is not None and row.status != "disconnected" for row in self._rows())

    @staticmethod
    def _never_installed(rows: list[_Row]) -> bool:
        return not any(row.auth == "oauth" for row in rows)

    def _env_connection(self, rows: list[_Row]) -> int | None:
        env = webhook_connection(self.runtime, self.crm.name)  # its row: created once, then remembered
        for row in rows:
            if row.id == env.id:
                return row.id if row.status != "disconnected" else None
        self._forget()  # a row this process had not seen: read them again next time
        return env.id

    def _rows(self) -> list[_Row]:
        if self._loaded is None:
            self._loaded = self._cached()
        return self._loaded

    def _cached(self) -> list[_Row]:
        memo_key = ("connection_directory", self.crm.name)
        try:
            version = self.runtime.redis.get(VERSION_KEY)
        except redis.exceptions.RedisError:
            return self._read()  # no cache without the version: read the database every time
        cached = self.runtime.memo.get(memo_key)
        if version is not None and cached is not None and cached[0] == version:
            return list(cached[1])
        rows = self._read()
        if version is None:
            # No version yet (a new Redis, or one flushed): make one; if another process or an
            # install set it meanwhile, what was read may be older than it, so it is not kept.
            version = uuid.uuid4().hex.encode()
            try:
                if not self.runtime.redis.set(VERSION_KEY, version, nx=True):
                    return rows
            except redis.exceptions.RedisError:
                return rows
        self.runtime.memo[memo_key] = (version, tuple(rows))
        return rows

    def _forget(self) -> None:
        self.runtime.memo.pop(("connection_directory", self.crm.name), None)
        self._loaded = None

    def _read(self) -> list[_Row]:
        same = self.crm.same_account
        with self.runtime.session() as session:
            found = session.execute(
                select(
                    Connection.id,
                    Connection.external_id,
                    Connection.auth,
                    Connection.status,
                    Connection.webhook_secret_digest,
                )
                .where(Connection.crm == self.crm.name)
                .order_by(Connection.id)
            ).all()
        return [_Row(id_, ext, same(ext), auth, status, digest) for id_, ext, auth, status, digest in found]


def _bump_version(runtime: Runtime) -> None:
    """Every process's directories read the connections again (after an install or a disconnect)."""
    try:
        runtime.redis.set(VERSION_KEY, uuid.uuid4().hex)
    except redis.exceptions.RedisError as error:
        # Without Redis the directories read the database on every delivery anyway.
        log.warning("connections_version_not_bumped", extra={"error": type(error).__name__})


# ---- helpers ----------------------------------------------------------------------------------------


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _challenge(verifier: str) -> str:
    """PKCE S256: base64url(SHA-256(verifier)) without padding."""
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
