"""OAuth installs, disconnects and webhook routing (pipeline/connections.py), against the CRM sandboxes.

The install flow runs as the ops page drives it: `begin_install` gives the consent URL, the test
follows it to the sandbox's consent page (which redirects straight back), and hands the callback's
query to `finish_install`. The sandboxes count code grants, refreshes and revocations per account.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import logging
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
import requests
from cryptography.fernet import Fernet
from sqlalchemy import select, update

from connector.crm import registry
from connector.crm.base import OAuthApp, OAuthGrant
from connector.errors import ConfigError, ConnectorError, NotFoundError
from connector.models import Connection, Segment, Sync, utcnow
from connector.pipeline.connections import (
    STATE_KEY,
    ConnectionDirectory,
    ConnectionStateError,
    InstallRefused,
    begin_install,
    connection_json,
    disconnect,
    finish_install,
    list_connections,
    rotate_keys,
    wake_paused_syncs,
)
from connector.pipeline.intake import crm_connection
from connector.pipeline.schedule import enqueue_due_segment_syncs
from connector.pipeline.segments import create_segment
from connector.pipeline.syncs import create_sync
from connector.runtime import Runtime
from connector.sandbox.server import SandboxServer
from connector.secretbox import SecretBox
from tests.conftest import SALESFORCE_ORG_ID, with_settings
from tests.connections_support import (
    ENV_PORTAL,
    KEY,
    ORG_B,
    PORTAL_B,
    REDIRECT,
    connection_count,
    consent,
    install,
    oauth_counts,
    stored,
    tokens_of,
)

# ---- install ------------------------------------------------------------------------------------


def test_a_hubspot_portal_is_installed_learnt_from_the_token_answer_and_stored_encrypted(
    installs: Runtime, hubspot_app: SandboxServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    installed = install(installs, hubspot_app, "hubspot", PORTAL_B)
    row = stored(installs, installed.connection.id)
    assert installed.created and installed.webhook_secret is None  # HubSpot routes by portalId
    assert (row.crm, row.external_id, row.auth, row.status) == ("hubspot", PORTAL_B, "oauth", "connected")
    assert row.settings["default_country"] == installs.settings.default_country
    held = tokens_of(row)
    assert held["access_token"] and held["refresh_token"] and held["expires_at"] > held["obtained_at"]
    assert held["access_token"] not in row.credentials and held["refresh_token"] not in row.credentials
    assert oauth_counts(hubspot_app, PORTAL_B)["code_grants"] == 1
    shown = json.dumps(connection_json(row, "https://connector.example"))
    assert held["access_token"] not in shown and held["refresh_token"] not in shown and KEY not in shown
    assert json.loads(shown)["webhook_url"] == "https://connector.example/webhooks/hubspot"
    assert all(held["access_token"] not in r.getMessage() and held["refresh_token"] not in r.getMessage()
               for r in caplog.records)  # fmt: skip


def test_installing_the_same_portal_again_updates_its_connection(
    installs: Runtime, hubspot_app: SandboxServer
) -> None:
    first = install(installs, hubspot_app, "hubspot", PORTAL_B)
    before = tokens_of(stored(installs, first.connection.id))
    with installs.session() as session:
        session.execute(
            update(Connection)
            .where(Connection.id == first.connection.id)
            .values(status="needs_reauth", last_error="x")
        )
    again = install(installs, hubspot_app, "hubspot", PORTAL_B, binding="session-b")
    row = stored(installs, first.connection.id)
    assert again.connection.id == first.connection.id and not again.created
    assert (row.status, row.last_error) == ("connected", None)
    assert tokens_of(row)["access_token"] != before["access_token"]
    assert sorted(c.external_id for c in list_connections(installs) if c.crm == "hubspot") == [
        ENV_PORTAL,
        PORTAL_B,
    ]


def test_a_salesforce_org_gets_pkce_its_instance_and_a_webhook_secret_shown_once(
    installs: Runtime, salesforce_app: SandboxServer
) -> None:
    url = begin_install(installs, "salesforce", "session-a", REDIRECT["salesforce"])
    query = dict(parse_qsl(urlsplit(url).query))
    assert query["code_challenge_method"] == "S256" and len(query["code_challenge"]) == 43
    requests.post(f"{salesforce_app.url}/_sandbox/oauth", json={"next_account": ORG_B}, timeout=5)
    installed = finish_install(installs, "salesforce", "session-a", consent(url))
    row = stored(installs, installed.connection.id)
    assert row.external_id == ORG_B and row.auth == "oauth"  # the org of the identity URL
    assert row.settings["instance_url"] == salesforce_app.url
    secret = installed.webhook_secret
    assert (
        secret and len(secret) >= 40 and row.webhook_secret_digest and secret not in row.webhook_secret_digest
    )
    directory = ConnectionDirectory(installs, "salesforce")
    assert directory.connection_with_secret(secret) == (row.id, ORG_B)
    assert directory.connection_with_secret(secret + "x") is None
    # The 15-character spelling of the org is the same org: a second install updates it, keeping
    # its webhook secret (shown only the first time).
    requests.post(f"{salesforce_app.url}/_sandbox/oauth", json={"next_account": ORG_B[:15]}, timeout=5)
    again = install(installs, salesforce_app, "salesforce")
    assert (again.connection.id, again.created, again.webhook_secret) == (row.id, False, None)
    assert stored(installs, row.id).webhook_secret_digest == row.webhook_secret_digest
    assert oauth_counts(salesforce_app, ORG_B)["code_grants"] == 2


def test_the_state_is_single_use_and_bound_to_its_session_and_crm(
    installs: Runtime, hubspot_app: SandboxServer
) -> None:
    url = begin_install(installs, "hubspot", "session-a", REDIRECT["hubspot"])
    args = consent(url)
    state = args["state"]
    assert len(state) >= 43  # 32 random bytes
    stored_keys = [k.decode() for k in installs.redis.keys("connector:oauth_state:*")]
    assert stored_keys and all(state not in k for k in stored_keys)  # kept under its SHA-256
    assert 590 <= installs.redis.ttl(stored_keys[0]) <= 600
    for crm, binding in (("hubspot", "session-b"), ("salesforce", "session-a")):
        with pytest.raises(InstallRefused) as refused:
            finish_install(installs, crm, binding, args)
        assert refused.value.code == "state_invalid" and refused.value.http_status == 400
    installed = finish_install(installs, "hubspot", "session-a", args)  # still the owner's to use
    with pytest.raises(InstallRefused) as replayed:
        finish_install(installs, "hubspot", "session-a", args)
    assert replayed.value.code == "state_invalid"
    assert oauth_counts(hubspot_app, ENV_PORTAL)["code_grants"] == 1  # the replay never reached HubSpot
    # The env portal installed by OAuth: its connection is the env one, its tokens now stored.
    assert installed.connection.id == crm_connection(installs, "hubspot").id
    assert (installed.connection.external_id, installed.connection.auth) == (ENV_PORTAL, "oauth")


@pytest.mark.parametrize(
    "callback",
    [
        {},  # no state at all
        {"state": "forged-state-value", "code": "abc"},
        {"code": "abc"},
    ],
)
def test_a_forged_or_missing_state_stores_nothing(installs: Runtime, callback: dict[str, str]) -> None:
    before = connection_count(installs)
    with pytest.raises(InstallRefused) as refused:
        finish_install(installs, "hubspot", "session-a", callback)
    assert refused.value.code == "state_invalid"
    assert connection_count(installs) == before


def test_an_expired_state_is_refused(installs: Runtime, hubspot_app: SandboxServer) -> None:
    args = consent(begin_install(installs, "hubspot", "session-a", REDIRECT["hubspot"]))
    for key in installs.redis.keys("connector:oauth_state:*"):
        installs.redis.delete(key)  # as Redis does after 600 s
    with pytest.raises(InstallRefused) as refused:
        finish_install(installs, "hubspot", "session-a", args)
    assert refused.value.code == "state_invalid"


def test_denied_consent_and_a_refused_code_store_nothing(
    installs: Runtime, hubspot_app: SandboxServer, salesforce_app: SandboxServer
) -> None:
    before = connection_count(installs)
    for sandbox, crm in ((hubspot_app, "hubspot"), (salesforce_app, "salesforce")):
        requests.post(f"{sandbox.url}/_sandbox/oauth", json={"deny_next": True}, timeout=5).raise_for_status()
        args = consent(begin_install(installs, crm, "session-a", REDIRECT[crm]))
        assert args["error"] == "access_denied" and "code" not in args
        with pytest.raises(InstallRefused) as denied:
            finish_install(installs, crm, "session-a", args)
        assert denied.value.code == "consent_denied" and "access_denied" in denied.value.message
        # A forged code with a good state: the CRM refuses it.
        args = consent(begin_install(installs, crm, "session-a", REDIRECT[crm]))
        with pytest.raises(InstallRefused) as refused:
            finish_install(installs, crm, "session-a", {**args, "code": "forged-code"})
        assert refused.value.code == "exchange_refused" and "nothing was connected" in refused.value.message
    assert connection_count(installs) == before


def test_installs_are_off_without_the_app_or_the_secret_key(installs: Runtime) -> None:
    no_key = with_settings(installs, secret_key=None)
    with pytest.raises(ConfigError) as refused:
        begin_install(no_key, "hubspot", "session-a", REDIRECT["hubspot"])
    assert refused.value.http_status == 503 and "CONNECTOR_SECRET_KEY" in refused.value.message
    no_app = with_settings(installs, hubspot_client_id=None)
    with pytest.raises(ConfigError) as refused:
        begin_install(no_app, "hubspot", "session-a", REDIRECT["hubspot"])
    assert (
        "HUBSPOT_CLIENT_ID" in refused.value.message and "CONNECTOR_SECRET_KEY" not in refused.value.message
    )
    assert not installs.redis.keys("connector:oauth_state:*")
    with pytest.raises(NotFoundError):
        begin_install(installs, "nosuchcrm", "session-a", "http://x/cb")
    # The env connections keep working without the key: they are listed and route webhooks.
    assert {c.crm for c in list_connections(no_key)} == {"hubspot", "salesforce"}
    assert ConnectionDirectory(no_key, "hubspot").connection_of(ENV_PORTAL) is not None


# ---- disconnect ---------------------------------------------------------------------------------


def test_disconnect_revokes_at_the_crm_and_forgets_the_tokens(
    installs: Runtime, hubspot_app: SandboxServer, salesforce_app: SandboxServer
) -> None:
    portal = install(installs, hubspot_app, "hubspot", PORTAL_B).connection
    org = install(installs, salesforce_app, "salesforce", ORG_B).connection
    for row, sandbox, account in ((portal, hubspot_app, PORTAL_B), (org, salesforce_app, ORG_B)):
        held = tokens_of(stored(installs, row.id))
        gone = disconnect(installs, row.id)
        assert (gone.status, gone.credentials, gone.last_error) == ("disconnected", None, None)
        assert oauth_counts(sandbox, account)["revoked"] == 1
        # The refresh token is dead at the CRM too.
        crm = registry.crm_named(row.crm)
        assert crm is not None and crm.oauth is not None
        with pytest.raises(ConnectorError):
            crm.oauth.refresh(installs.settings, held["refresh_token"])
        assert disconnect(installs, row.id).status == "disconnected"  # twice: nothing more happens
        assert oauth_counts(sandbox, account)["revoked"] == 1


def test_the_env_connection_cannot_be_disconnected(installs: Runtime) -> None:
    env = crm_connection(installs, "hubspot")
    with pytest.raises(ConnectionStateError) as refused:
        disconnect(installs, env.id)
    assert refused.value.http_status == 409 and "HUBSPOT_ACCESS_TOKEN" in refused.value.message
    assert stored(installs, env.id).status == "connected"


def test_a_failed_revocation_is_recorded_and_the_tokens_are_forgotten_anyway(
    installs: Runtime, hubspot_app: SandboxServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    row = install(installs, hubspot_app, "hubspot", PORTAL_B).connection
    hubspot = registry.CRMS["hubspot"]
    assert hubspot.oauth is not None

    def refuse(settings: Any, token: str) -> None:
        raise ConnectorError("hubspot_oauth_unreachable", "HubSpot did not answer (connection refused)")

    broken = dataclasses.replace(hubspot, oauth=dataclasses.replace(hubspot.oauth, revoke=refuse))
    monkeypatch.setitem(registry.CRMS, "hubspot", broken)
    gone = disconnect(installs, row.id)
    assert (gone.status, gone.credentials) == ("disconnected", None)
    assert gone.last_error is not None and "did not answer" in gone.last_error


def test_a_disconnected_connections_schedules_stop_until_it_is_installed_again(
    installs: Runtime, hubspot_app: SandboxServer
) -> None:
    portal = install(installs, hubspot_app, "hubspot", PORTAL_B).connection
    segment = create_segment(
        installs,
        {"kind": "hubspot_list", "ref": "41", "schedule": "* * * * *", "connection_id": portal.id},
    )
    with installs.session() as session:
        session.execute(
            update(Segment).where(Segment.id == segment.id).values(created_at=utcnow() - timedelta(hours=1))
        )
    disconnect(installs, portal.id)
    assert enqueue_due_segment_syncs(installs) == []
    install(installs, hubspot_app, "hubspot", PORTAL_B)
    started = enqueue_due_segment_syncs(installs)
    assert len(started) == 1
    with installs.session() as session:
        assert session.get(Sync, started[0]).connection_id == portal.id  # type: ignore[union-attr]


# ---- paused syncs, keys -------------------------------------------------------------------------


def test_a_new_install_wakes_the_syncs_paused_for_it(installs: Runtime, hubspot_app: SandboxServer) -> None:
    portal = install(installs, hubspot_app, "hubspot", PORTAL_B).connection
    syncs = [
        create_sync(installs, connection_id=portal.id, crm="hubspot", type_="email", target_country="US",
                    source={"kind": "hubspot_list", "ref": str(n)}, trigger="admin", name=f"list {n}")
        for n in range(3)
    ]  # fmt: skip
    reasons = [
        "connection_needs_reauth: HubSpot refused the refresh token",
        "connection_disconnected: connection was disconnected",
        "rate_limited: HubSpot said 429",
    ]
    with installs.session() as session:
        for sync, reason in zip(syncs, reasons, strict=True):
            session.execute(
                update(Sync)
                .where(Sync.id == sync.id)
                .values(pause_reason=reason, paused_until=utcnow() + timedelta(hours=1))
            )
        before = dict(session.execute(select(Sync.id, Sync.job_id)).all())
    install(installs, hubspot_app, "hubspot", PORTAL_B)
    with installs.session() as session:
        after = dict(session.execute(select(Sync.id, Sync.job_id)).all())
    woken = [sync.id for sync in syncs if after[sync.id] != before[sync.id]]
    assert woken == [syncs[0].id, syncs[1].id]  # the rate-limited one keeps its wait
    assert wake_paused_syncs(installs, portal.id) == 2


def test_rotation_re_encrypts_every_stored_token_under_the_first_key(
    installs: Runtime, hubspot_app: SandboxServer
) -> None:
    row = install(installs, hubspot_app, "hubspot", PORTAL_B).connection
    held = tokens_of(stored(installs, row.id))
    new_key = Fernet.generate_key().decode()
    rotated = with_settings(installs, secret_key=f"{new_key},{KEY}")
    assert rotate_keys(rotated) == 1
    assert SecretBox([new_key]).open(stored(installs, row.id).credentials or "") == held
    with pytest.raises(ConfigError):
        rotate_keys(with_settings(installs, secret_key=None))
    with pytest.raises(ConfigError) as mismatch:
        rotate_keys(with_settings(installs, secret_key=Fernet.generate_key().decode()))
    assert mismatch.value.code == "secret_key_mismatch"


# ---- webhook routing ----------------------------------------------------------------------------


def test_the_directory_routes_accounts_to_their_connections(
    installs: Runtime, hubspot_app: SandboxServer, salesforce_app: SandboxServer
) -> None:
    portal = install(installs, hubspot_app, "hubspot", PORTAL_B).connection
    org = install(installs, salesforce_app, "salesforce", ORG_B).connection
    hubspot = ConnectionDirectory(installs, "hubspot")
    env_portal = hubspot.connection_of(ENV_PORTAL)
    assert env_portal == crm_connection(installs, "hubspot").id
    assert hubspot.connection_of(PORTAL_B) == portal.id
    assert hubspot.connection_of(f" {PORTAL_B} ") == portal.id  # HubSpot's spellings of one portal
    assert hubspot.connection_of(None) == env_portal
    assert hubspot.connection_of("999") is None  # a portal nobody installed
    salesforce = ConnectionDirectory(installs, "salesforce")
    assert salesforce.connection_of(ORG_B[:15]) == salesforce.connection_of(ORG_B) == org.id
    assert salesforce.connection_of(SALESFORCE_ORG_ID) == crm_connection(installs, "salesforce").id
    assert salesforce.connection_of("00D000000000001") is None


def test_without_env_credentials_deliveries_naming_no_account_have_no_connection(
    installs: Runtime, hubspot_app: SandboxServer
) -> None:
    install(installs, hubspot_app, "hubspot", PORTAL_B)
    oauth_only = with_settings(installs, hubspot_access_token=None, hubspot_portal_id=None)
    assert ConnectionDirectory(oauth_only, "hubspot").connection_of(None) is None
    assert ConnectionDirectory(oauth_only, "hubspot").connection_of("999") is None


def test_before_any_install_the_env_connection_takes_every_account_as_it_always_did(runtime: Runtime) -> None:
    """HUBSPOT_PORTAL_ID unset, nothing installed: the single-connection setup, unchanged."""
    directory = ConnectionDirectory(runtime, "hubspot")
    env = directory.connection_of("12345")
    assert env == crm_connection(runtime, "hubspot").id
    assert directory.connection_of(None) == env


def test_every_process_sees_an_install_or_a_disconnect_at_once(
    installs: Runtime, hubspot_app: SandboxServer
) -> None:
    other = dataclasses.replace(installs, memo={})  # another web process: a cache of its own
    assert ConnectionDirectory(other, "hubspot").connection_of(PORTAL_B) is None
    portal = install(installs, hubspot_app, "hubspot", PORTAL_B).connection
    assert ConnectionDirectory(other, "hubspot").connection_of(PORTAL_B) == portal.id
    disconnect(installs, portal.id)
    assert ConnectionDirectory(other, "hubspot").connection_of(PORTAL_B) is None


def test_the_directory_reads_the_database_once_per_change_not_per_delivery(
    installs: Runtime, hubspot_app: SandboxServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    portal = install(installs, hubspot_app, "hubspot", PORTAL_B).connection
    reads = []
    original = ConnectionDirectory._read

    def counted(self: ConnectionDirectory) -> Any:
        reads.append(1)
        return original(self)

    monkeypatch.setattr(ConnectionDirectory, "_read", counted)
    for _ in range(20):
        assert ConnectionDirectory(installs, "hubspot").connection_of(PORTAL_B) == portal.id
    assert len(reads) == 1
    installs.redis.flushdb()  # a Redis that lost the version: read again, then cached again
    for _ in range(5):
        assert ConnectionDirectory(installs, "hubspot").connection_of(PORTAL_B) == portal.id
    assert len(reads) == 2


# ---- a CRM whose app is a test's own ------------------------------------------------------------


def test_install_with_an_app_of_the_tests_own(installs: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the pipeline hands an OAuth app and keeps from it, whatever the CRM."""
    seen: dict[str, Any] = {}

    def authorize_url(settings: Any, redirect_uri: str, state: str, challenge: str | None) -> str:
        seen["challenge"] = challenge
        return f"https://crm.example/consent?state={state}"

    def exchange(settings: Any, code: str, redirect_uri: str, verifier: str | None) -> OAuthGrant:
        seen.update(code=code, redirect_uri=redirect_uri, verifier=verifier)
        return OAuthGrant("at-1", "rt-1", None, "00D5g000009ABCDEFG", "Acme", "https://acme.example")

    app = OAuthApp(
        missing=lambda settings: None,
        authorize_url=authorize_url,
        pkce=True,
        exchange_code=exchange,
        refresh=lambda settings, token: OAuthGrant("at-2", None, None, ""),
        revoke=lambda settings, token: None,
    )
    salesforce = registry.CRMS["salesforce"]
    monkeypatch.setitem(registry.CRMS, "salesforce", dataclasses.replace(salesforce, oauth=app))
    url = begin_install(installs, "salesforce", "s", "https://connector.example/cb")
    state = dict(parse_qsl(urlsplit(url).query))["state"]
    held = json.loads(installs.redis.get(STATE_KEY.format(hashlib.sha256(state.encode()).hexdigest())))
    assert held["verifier"] and held["binding"] != "s"  # the binding is kept as a digest
    installed = finish_install(installs, "salesforce", "s", {"state": state, "code": "c-1"})
    challenge = base64.urlsafe_b64encode(hashlib.sha256(seen["verifier"].encode()).digest()).rstrip(b"=")
    assert seen["challenge"] == challenge.decode() and seen["redirect_uri"] == "https://connector.example/cb"
    row = stored(installs, installed.connection.id)
    assert (row.name, row.settings["instance_url"]) == ("Acme", "https://acme.example")
