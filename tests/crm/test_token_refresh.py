"""OAuth connections' tokens kept fresh while a sync reads and writes, over HTTP against the sandboxes.

The tokens live in the connection's row (crm/tokens.py, StoredTokens); the sandbox expires every
access token of an account on command (`POST /_sandbox/oauth?account=… {"expire_tokens": true}`)
and counts refreshes and expired rejections (`GET /_sandbox/oauth`). A token that expires between
pages, between batches or while a bulk job runs is refreshed exactly once, the request that was
refused is sent again, and no record is written twice. Two workers refused at once refresh once; a
revoked refresh token pauses the sync (connection_needs_reauth) and marks the connection.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests

from connector.crm.base import Account, Crm, FlagUpdate, OAuthGrant, Verdict
from connector.crm.hubspot import CRM as HUBSPOT
from connector.crm.salesforce import CRM as SALESFORCE
from connector.crm.tokens import NEEDS_REAUTH, StoredTokens, account_for, seal_grant
from connector.errors import ConnectorError, TransientError
from connector.models import Connection
from connector.runtime import Runtime
from connector.sandbox.server import SandboxServer, serve_in_thread
from connector.secretbox import require_secret_box
from tests.conftest import with_settings
from tests.crm.test_oauth_clients import control, hubspot_install, salesforce_install

PORTAL = "81001"
ORG = "00D5g000004TOKNEA4"  # an 18-character org id the sandbox accepts
NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
HS_UPDATES = "POST /crm/v3/objects/contacts/batch/update"


@pytest.fixture
def oauth_runtime(installs_without_env: Runtime) -> Runtime:
    """Both sandboxes (hubspot_app, salesforce_app) installable by OAuth, no env connection; bulk
    jobs are polled every 0.05 to 0.2 s."""
    return with_settings(installs_without_env, poll_initial_seconds=0.05, poll_max_seconds=0.2)


# ---- helpers -------------------------------------------------------------------------------------


def expire_tokens(url: str, account: str) -> None:
    assert control(url, "/_sandbox/oauth", {"expire_tokens": True}, account)["expired_tokens"] >= 1


def oauth_counts(url: str, account: str) -> dict[str, int]:
    return control(url, "/_sandbox/oauth", account=account)


def store(runtime: Runtime, crm: Crm, grant: OAuthGrant) -> Account:
    """The connection row an install leaves (tokens sealed), and the Account a sync of it gets."""
    box = require_secret_box(runtime.settings)
    with runtime.session() as session:
        row = Connection(
            crm=crm.name,
            external_id=grant.account_id,
            name=f"{crm.label} {grant.account_id}",
            auth="oauth",
            status="connected",
            credentials=seal_grant(box, grant),
            settings={"instance_url": grant.instance_url} if grant.instance_url else {},
        )
        session.add(row)
        session.flush()
        session.expunge(row)
    return account_for(runtime, row)


def stored(runtime: Runtime, connection_id: int | None) -> tuple[Connection, dict[str, Any]]:
    with runtime.session() as session:
        row = session.get(Connection, connection_id)
        assert row is not None
        session.expunge(row)
    opened = require_secret_box(runtime.settings).open(row.credentials) if row.credentials else {}
    return row, opened


def expiring_once(url: str, account: str) -> tuple[Callable[[float], None], list[bool]]:
    """A sleep that expires the account's tokens the first time it is called (a bulk job's first poll)."""
    done: list[bool] = []

    def sleep(seconds: float) -> None:
        if not done:
            expire_tokens(url, account)
            done.append(True)
        time.sleep(min(seconds, 0.3))

    return sleep, done


def verdict(status: str = "valid") -> Verdict:
    return Verdict(
        status=status,
        valid=status == "valid",
        wrong=status == "wrong",
        unknown=status == "unknown",
        is_role=False,
        is_disposable=False,
        verified_at=NOW,
    )


def updates_expiring_after(
    record_ids: list[str], after: int, expire: Callable[[], None], object_type: str | None = None
) -> Iterator[FlagUpdate]:
    """The updates, the account's tokens expiring once `after` of them were drawn (between batches)."""
    for number, record_id in enumerate(record_ids, 1):
        yield FlagUpdate(record_id, object_type, verdict())
        if number == after:
            expire()


def assert_no_token_in(error: BaseException, *tokens: str | None) -> None:
    text = str(error)
    assert not any(token and token in text for token in tokens)


# ---- HubSpot -------------------------------------------------------------------------------------


def hubspot_portal(runtime: Runtime, url: str, contacts: int) -> tuple[Account, str, list[str]]:
    """An installed portal holding a list of `contacts` contacts: (account, list id, contact ids)."""
    grant = hubspot_install(runtime.settings, url, PORTAL)
    seeded = control(
        url, "/_sandbox/seed", {"generate": {"contacts": contacts, "list_name": "Mid-sync"}}, PORTAL
    )
    answer = requests.get(
        f"{url}/_sandbox/contacts", params={"account": PORTAL, "limit": 100_000}, timeout=30
    )
    answer.raise_for_status()
    ids = [contact["id"] for contact in answer.json()["contacts"]]
    return store(runtime, HUBSPOT, grant), str(seeded["listId"]), ids


def hubspot_api(runtime: Runtime, account: Account, sleep: Callable[[float], None] = time.sleep) -> Any:
    from connector.crm.hubspot.api import HubSpotApi

    return HubSpotApi(runtime.settings, runtime.redis, sleep=sleep, account=account)


def test_hubspot_export_whose_token_expires_while_it_runs_refreshes_once(
    oauth_runtime: Runtime, hubspot_app: SandboxServer, tmp_path: Path
) -> None:
    from connector.crm.hubspot.records import HubSpotListSource

    account, list_id, ids = hubspot_portal(oauth_runtime, hubspot_app.url, 300)
    sleep, expired = expiring_once(hubspot_app.url, PORTAL)
    api = hubspot_api(oauth_runtime, account, sleep)
    source = HubSpotListSource(api, list_id, "email", work_dir=tmp_path, bulk_threshold=10)

    records = list(source.iter_records())

    assert expired and sorted(r.record_id for r in records) == sorted(ids)
    counts = oauth_counts(hubspot_app.url, PORTAL)
    assert (counts["refreshes"], counts["expired_rejections"]) == (1, 1)
    row, tokens = stored(oauth_runtime, account.connection_id)
    assert row.status == "connected" and tokens["access_token"] == api._token
    assert control(hubspot_app.url, "/_sandbox/state", account=PORTAL)["exports"] == 1  # not started again


def test_hubspot_list_pages_whose_token_expires_between_pages_refresh_once(
    oauth_runtime: Runtime, hubspot_app: SandboxServer, tmp_path: Path
) -> None:
    from connector.crm.hubspot.records import HubSpotListSource

    account, list_id, ids = hubspot_portal(oauth_runtime, hubspot_app.url, 250)
    source = HubSpotListSource(hubspot_api(oauth_runtime, account), list_id, "email", work_dir=tmp_path)
    records = []
    for record in source.iter_records():
        records.append(record)
        if len(records) == 100:  # between two batch reads
            expire_tokens(hubspot_app.url, PORTAL)

    assert sorted(r.record_id for r in records) == sorted(ids)
    counts = oauth_counts(hubspot_app.url, PORTAL)
    assert (counts["refreshes"], counts["expired_rejections"]) == (1, 1)


def test_hubspot_write_back_whose_token_expires_between_batches_writes_each_record_once(
    oauth_runtime: Runtime, hubspot_app: SandboxServer, tmp_path: Path
) -> None:
    from connector.crm.hubspot.flags import HubSpotFlagWriter

    account, _list_id, ids = hubspot_portal(oauth_runtime, hubspot_app.url, 250)
    writer = HubSpotFlagWriter(hubspot_api(oauth_runtime, account), "email", work_dir=tmp_path)
    expire_tokens(hubspot_app.url, PORTAL)  # before property creation too
    writer.prepare()
    failures = writer.write(updates_expiring_after(ids, 150, lambda: expire_tokens(hubspot_app.url, PORTAL)))

    assert failures == []
    counts = oauth_counts(hubspot_app.url, PORTAL)
    assert (counts["refreshes"], counts["expired_rejections"]) == (2, 2)
    # Three batches of 100 written, plus the one refused (expired) and sent again: none twice.
    assert control(hubspot_app.url, "/_sandbox/state", account=PORTAL)["requests"][HS_UPDATES] == 3 + 1
    flagged = requests.get(
        f"{hubspot_app.url}/_sandbox/contacts",
        params={"account": PORTAL, "property": "apexverify_status", "limit": 1000},
        timeout=10,
    ).json()["contacts"]
    assert {c["id"] for c in flagged if c["properties"].get("apexverify_status") == "valid"} == set(ids)


def test_hubspot_import_whose_token_expires_while_it_runs_refreshes_once(
    oauth_runtime: Runtime, hubspot_app: SandboxServer, tmp_path: Path
) -> None:
    from connector.crm.hubspot.flags import HubSpotFlagWriter

    account, _list_id, ids = hubspot_portal(oauth_runtime, hubspot_app.url, 120)
    sleep, expired = expiring_once(hubspot_app.url, PORTAL)
    api = hubspot_api(oauth_runtime, account, sleep)
    writer = HubSpotFlagWriter(api, "email", expected_updates=120, bulk_threshold=10, work_dir=tmp_path)
    writer.prepare()
    failures = writer.write(FlagUpdate(record_id, None, verdict()) for record_id in ids)

    assert expired and failures == []
    counts = oauth_counts(hubspot_app.url, PORTAL)
    assert (counts["refreshes"], counts["expired_rejections"]) == (1, 1)
    assert len(control(hubspot_app.url, "/_sandbox/state", account=PORTAL)["imports"]) == 1  # one import


def test_two_workers_refused_at_once_refresh_once(oauth_runtime: Runtime, hubspot_app: SandboxServer) -> None:
    account, list_id, _ids = hubspot_portal(oauth_runtime, hubspot_app.url, 5)
    assert account.connection_id is not None
    # Two workers: each its own StoredTokens (as each step builds its own), holding the same token.
    connection_id = account.connection_id
    workers = [
        hubspot_api(
            oauth_runtime, Account(connection_id, PORTAL, StoredTokens(oauth_runtime, connection_id, HUBSPOT))
        )
        for _ in range(2)
    ]
    for api in workers:
        api.call(api.lists.get_by_id, list_id)
    expire_tokens(hubspot_app.url, PORTAL)
    start = threading.Barrier(2)
    sizes: list[int] = []
    errors: list[BaseException] = []

    def run(api: Any) -> None:
        start.wait()
        try:
            sizes.append(api.call(api.lists.get_by_id, list_id).list.size)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(api,)) for api in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert errors == [] and sizes == [5, 5]
    counts = oauth_counts(hubspot_app.url, PORTAL)
    assert counts["refreshes"] == 1 and counts["expired_rejections"] == 2
    assert sum(api.tokens.refreshes for api in workers) == 1
    assert workers[0]._token == workers[1]._token


def test_a_revoked_refresh_token_pauses_the_sync_and_marks_the_connection(
    oauth_runtime: Runtime, hubspot_app: SandboxServer
) -> None:
    account, list_id, _ids = hubspot_portal(oauth_runtime, hubspot_app.url, 3)
    api = hubspot_api(oauth_runtime, account)
    api.call(api.lists.get_by_id, list_id)
    control(hubspot_app.url, "/_sandbox/oauth", {"revoke_refresh_tokens": True}, PORTAL)
    expire_tokens(hubspot_app.url, PORTAL)

    with pytest.raises(TransientError) as paused:
        api.call(api.lists.get_by_id, list_id)

    assert paused.value.code == NEEDS_REAUTH and paused.value.retry_after >= 600
    row, tokens = stored(oauth_runtime, account.connection_id)
    assert row.status == "needs_reauth" and row.last_error and "hubspot_refresh_refused" in row.last_error
    assert_no_token_in(paused.value, tokens["access_token"], tokens["refresh_token"])
    assert tokens["refresh_token"] not in (row.last_error or "")
    assert oauth_counts(hubspot_app.url, PORTAL)["refused_refreshes"] == 1
    # Another worker's step pauses at once, without asking HubSpot again.
    other = hubspot_api(oauth_runtime, account_for(oauth_runtime, row))
    with pytest.raises(TransientError) as again:
        other.call(other.lists.get_by_id, list_id)
    assert again.value.code == NEEDS_REAUTH
    assert oauth_counts(hubspot_app.url, PORTAL)["refused_refreshes"] == 1


def test_the_env_portal_never_refreshes(oauth_runtime: Runtime, hubspot_app: SandboxServer) -> None:
    env = with_settings(oauth_runtime, hubspot_access_token="wrong-env-token")
    api = hubspot_api(env, Account(connection_id=1, external_id="default"))
    with pytest.raises(ConnectorError) as refused:
        api.call(api.lists.get_by_id, "1")
    assert refused.value.code == "hubspot_unauthorized" and not isinstance(refused.value, TransientError)


# ---- Salesforce ----------------------------------------------------------------------------------


def salesforce_org(runtime: Runtime, url: str, contacts: int) -> tuple[Account, list[str]]:
    grant = salesforce_install(runtime.settings, url, ORG)
    people = [{"LastName": f"P{i}", "Email": f"p{i}@example.com"} for i in range(contacts)]
    ids = control(url, "/_sandbox/seed", {"contacts": people}, ORG)["contacts"]
    control(url, "/_sandbox/config", {"track_writes": ["ApexVerify_Status__c"]}, ORG)
    return store(runtime, SALESFORCE, grant), ids


def salesforce_api(runtime: Runtime, account: Account, sleep: Callable[[float], None] = time.sleep) -> Any:
    from connector.crm.salesforce.api import SalesforceApi

    return SalesforceApi(runtime.settings, sleep=sleep, account=account)


def writes(url: str) -> dict[str, list[Any]]:
    return control(url, "/_sandbox/writes?field=ApexVerify_Status__c", account=ORG)["records"]


def test_salesforce_write_back_whose_session_expires_between_batches_writes_each_record_once(
    oauth_runtime: Runtime, salesforce_app: SandboxServer, tmp_path: Path
) -> None:
    from connector.crm.salesforce.flags import SalesforceFlagWriter

    account, ids = salesforce_org(oauth_runtime, salesforce_app.url, 300)
    writer = SalesforceFlagWriter(
        salesforce_api(oauth_runtime, account), "email", objects=("Contact",), work_dir=tmp_path
    )
    writer.prepare()
    updates = updates_expiring_after(
        ids, 250, lambda: expire_tokens(salesforce_app.url, ORG), object_type="Contact"
    )
    failures = writer.write(updates)

    assert failures == []
    counts = oauth_counts(salesforce_app.url, ORG)
    assert (counts["refreshes"], counts["expired_rejections"]) == (1, 1)
    written = writes(salesforce_app.url)
    assert sorted(written) == sorted(ids) and all(values == ["valid"] for values in written.values())


def test_salesforce_bulk_query_and_ingest_whose_session_expires_while_they_run_refresh_once(
    oauth_runtime: Runtime, salesforce_app: SandboxServer, tmp_path: Path
) -> None:
    from connector.crm.salesforce.flags import SalesforceFlagWriter
    from connector.crm.salesforce.records import SalesforceSegmentSource

    account, ids = salesforce_org(oauth_runtime, salesforce_app.url, 40)
    sleep, expired = expiring_once(salesforce_app.url, ORG)
    api = salesforce_api(oauth_runtime, account, sleep)
    source = {"kind": "salesforce_soql", "ref": "Email != NULL", "object": "Contact"}
    records = list(
        SalesforceSegmentSource(api, source, "email", bulk_threshold=0, work_dir=tmp_path).iter_records()
    )
    assert expired and sorted(r.record_id for r in records) == sorted(ids)
    assert oauth_counts(salesforce_app.url, ORG)["refreshes"] == 1

    sleep, expired = expiring_once(salesforce_app.url, ORG)
    api = salesforce_api(oauth_runtime, account, sleep)
    writer = SalesforceFlagWriter(
        api, "email", objects=("Contact",), expected_updates=40, bulk_threshold=5, work_dir=tmp_path
    )
    writer.prepare()
    assert writer.write(FlagUpdate(record_id, "Contact", verdict()) for record_id in ids) == []
    assert expired
    counts = oauth_counts(salesforce_app.url, ORG)
    assert (counts["refreshes"], counts["expired_rejections"]) == (2, 2)
    written = writes(salesforce_app.url)
    assert sorted(written) == sorted(ids) and all(values == ["valid"] for values in written.values())


def test_a_revoked_salesforce_refresh_token_pauses_the_sync(
    oauth_runtime: Runtime, salesforce_app: SandboxServer
) -> None:
    account, _ids = salesforce_org(oauth_runtime, salesforce_app.url, 1)
    api = salesforce_api(oauth_runtime, account)
    api.query("SELECT Id FROM Contact")
    control(salesforce_app.url, "/_sandbox/oauth", {"revoke_refresh_tokens": True}, ORG)
    expire_tokens(salesforce_app.url, ORG)

    with pytest.raises(TransientError) as paused:
        api.query("SELECT Id FROM Contact")

    assert paused.value.code == NEEDS_REAUTH
    row, tokens = stored(oauth_runtime, account.connection_id)
    assert row.status == "needs_reauth" and "salesforce_refresh_refused" in (row.last_error or "")
    assert_no_token_in(paused.value, tokens["access_token"], tokens["refresh_token"])


def test_stored_tokens_are_refreshed_shortly_before_they_expire(
    oauth_runtime: Runtime, hubspot_app: SandboxServer
) -> None:
    """HubSpot's tokens say when they expire: one about to is refreshed before it is sent, not after a 401."""
    control(hubspot_app.url, "/_sandbox/oauth", {"token_ttl_seconds": 4})
    account, list_id, _ids = hubspot_portal(oauth_runtime, hubspot_app.url, 2)
    api = hubspot_api(oauth_runtime, account)
    api.call(api.lists.get_by_id, list_id)
    time.sleep(3.3)  # under a quarter of its life left
    api.call(api.lists.get_by_id, list_id)
    counts = oauth_counts(hubspot_app.url, PORTAL)
    assert (counts["refreshes"], counts["expired_rejections"]) == (1, 0)
    assert secrets.compare_digest(stored(oauth_runtime, account.connection_id)[1]["access_token"], api._token)


def test_an_export_file_on_the_api_host_refused_with_401_is_fetched_again_with_a_renewed_token(
    tmp_path: Path,
) -> None:
    """HubSpot's export links are pre-signed elsewhere; one on HUBSPOT_BASE_URL carries the token, and a
    401 there renews it once like every other call."""
    from flask import Flask, request

    from connector.crm.hubspot import bulk
    from connector.crm.hubspot.settings import HubSpotSettings

    app = Flask("files")
    seen: list[str | None] = []

    @app.get("/files/export.csv")
    def export_file() -> tuple[str, int]:
        seen.append(request.headers.get("Authorization"))
        if request.headers.get("Authorization") != "Bearer fresh-token":
            return "expired", 401
        return "Record ID,email\n1,a@example.com\n", 200

    server = serve_in_thread(app)

    class Api:
        own = HubSpotSettings(base_url=server.url)
        token = "stale-token"

        def bearer_header(self) -> dict[str, str]:
            return {"Authorization": f"Bearer {self.token}"}

        def renew_token(self) -> bool:
            self.token = "fresh-token"
            return True

    try:
        bulk._download(Api(), f"{server.url}/files/export.csv", tmp_path / "export.csv")  # type: ignore[arg-type]
    finally:
        server.stop()
    assert seen == ["Bearer stale-token", "Bearer fresh-token"]
    assert (tmp_path / "export.csv").read_text().startswith("Record ID,email")
