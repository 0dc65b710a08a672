"""Issue 14's acceptance run: OAuth installs of two HubSpot portals and two Salesforce orgs through
the ops page in Chromium, against the real processes (gunicorn as the Procfile runs it, two
`connector worker`s) and the CRM sandboxes' OAuth servers over HTTP.

Each install is a click on "Connect …" while the sandbox's consent page is set to the next
account (POST /_sandbox/oauth {"next_account"}); the connector learns the account from the token
endpoint. Then a segment on each connection syncs, its flags land in its own portal/org only,
webhooks are routed by portal and by each org's own secret, forged and replayed callbacks and a
foreign portal are refused, disconnect revokes at the sandbox — and at the end no token, client
secret, webhook secret (but on its once-view page) or CONNECTOR_SECRET_KEY is found in the
processes' logs (at DEBUG), the pages or the API answers.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
import requests
from cryptography.fernet import Fernet
from playwright.sync_api import Browser, Page, Route, expect
from sqlalchemy import func, select

from connector.crm.hubspot.webhook import sign
from connector.models import CoalescedContact, Connection, Sync, SyncStatus, SyncValue
from connector.pipeline.coalesce import flush_due_buffers
from connector.runtime import Runtime
from connector.sandbox.salesforce_ids import to_18
from connector.sandbox.server import SandboxServer, serve_in_thread
from connector.secretbox import SecretBox
from tests.conftest import HUBSPOT_TOKEN, SALESFORCE_SESSION, with_settings
from tests.processes import connector_env, free_port, kill, start_web, start_worker, wait_for

ADMIN_TOKEN = "test-admin-token"
SECRET_KEY = Fernet.generate_key().decode()
HUBSPOT_APP = ("oauth-e2e-hubspot-client-id", "oauth-e2e-hubspot-client-secret")
SALESFORCE_APP = ("oauth-e2e-salesforce-consumer-key", "oauth-e2e-salesforce-consumer-secret")
PORTALS = ("91001", "91002")
ORGS = (to_18("00D5g00000OrgA1"), to_18("00D5g00000OrgB2"))
FOREIGN_PORTAL = 99_999
CONTACTS_PER_ACCOUNT = 4
HUBSPOT_FLAG = "apexverify_status"
SALESFORCE_FLAG = "ApexVerify_Status__c"


@dataclass
class Account:
    """One installed portal/org: its sandbox, its connection, what was seeded in it."""

    crm: str
    label: str
    sandbox: SandboxServer
    external_id: str
    connection_id: int = 0
    webhook_secret: str | None = None
    emails: list[str] = field(default_factory=list)
    record_ids: list[str] = field(default_factory=list)
    ref: str = ""  # its list / campaign
    segment_id: int = 0
    sync_id: int = 0


@dataclass
class Seen:
    """Everything the run showed someone: pages (once-view pages apart) and API answers."""

    pages: list[tuple[str, str]] = field(default_factory=list)
    once_views: list[tuple[str, str]] = field(default_factory=list)
    api: list[tuple[str, str]] = field(default_factory=list)

    def page(self, page: Page, label: str) -> str:
        html = page.content()
        self.pages.append((label, html))
        return html


# ---- fixtures ---------------------------------------------------------------------------------------


@pytest.fixture
def hubspot(hubspot_specs_dir: Path) -> Iterator[SandboxServer]:
    """HubSpot with the app's client id and secret; its env token is one the connector does not have,
    so every call the connector makes must carry a token it got by OAuth."""
    from connector.sandbox.hubspot import create_app

    server = serve_in_thread(
        create_app(
            access_token=HUBSPOT_TOKEN, client_id=HUBSPOT_APP[0], client_secret=HUBSPOT_APP[1],
            export_delay=0.2, import_delay=0.2, specs_dir=hubspot_specs_dir,
        )
    )  # fmt: skip
    yield server
    server.stop()


@pytest.fixture
def salesforce() -> Iterator[SandboxServer]:
    from connector.sandbox.salesforce import create_app

    server = serve_in_thread(
        create_app(
            access_token=SALESFORCE_SESSION, client_id=SALESFORCE_APP[0], client_secret=SALESFORCE_APP[1],
            bulk_delay=0.2,
        )
    )  # fmt: skip
    yield server
    server.stop()


@pytest.fixture
def web_port() -> int:
    return free_port()


@pytest.fixture
def install_runtime(
    runtime: Runtime, hubspot: SandboxServer, salesforce: SandboxServer, web_port: int
) -> Runtime:
    if "fakeredis" in type(runtime.redis).__module__:
        pytest.skip("web and worker processes need a real Redis server")
    return with_settings(
        runtime,
        secret_key=SECRET_KEY,
        public_base_url=f"http://127.0.0.1:{web_port}",
        coalesce_window_seconds=0,  # the test's own flush turns webhook contacts into a sync at once
        step_lease_seconds=10,
        hubspot_base_url=hubspot.url, hubspot_auth_url=hubspot.url,
        hubspot_client_id=HUBSPOT_APP[0], hubspot_client_secret=HUBSPOT_APP[1],
        salesforce_login_url=salesforce.url,
        salesforce_client_id=SALESFORCE_APP[0], salesforce_client_secret=SALESFORCE_APP[1],
    )  # fmt: skip


def process_env(runtime: Runtime) -> dict[str, str]:
    settings = runtime.settings
    return connector_env(
        runtime,
        LOG_LEVEL="DEBUG",  # the strictest grep: every line the processes can write
        # gunicorn's access log on, with its default format (request line with query, referer).
        GUNICORN_CMD_ARGS="--access-logfile - --error-logfile - --log-level debug",
        CONNECTOR_SECRET_KEY=SECRET_KEY,
        PUBLIC_BASE_URL=settings.public_base_url or "",
        HUBSPOT_AUTH_URL=settings.env["HUBSPOT_AUTH_URL"],
        HUBSPOT_CLIENT_ID=HUBSPOT_APP[0],
        HUBSPOT_CLIENT_SECRET=HUBSPOT_APP[1],
        SALESFORCE_LOGIN_URL=settings.env["SALESFORCE_LOGIN_URL"],
        SALESFORCE_CLIENT_ID=SALESFORCE_APP[0],
        SALESFORCE_CLIENT_SECRET=SALESFORCE_APP[1],
    )


# ---- helpers ----------------------------------------------------------------------------------------


def steer(sandbox: SandboxServer, **body: object) -> None:
    requests.post(f"{sandbox.url}/_sandbox/oauth", json=body, timeout=5).raise_for_status()


def oauth_counts(sandbox: SandboxServer, account: str) -> dict[str, int]:
    answer = requests.get(f"{sandbox.url}/_sandbox/oauth", params={"account": account}, timeout=5)
    answer.raise_for_status()
    return answer.json()


def connection_count(runtime: Runtime) -> int:
    with runtime.session() as session:
        return session.scalar(select(func.count()).select_from(Connection)) or 0


def install(page: Page, base: str, account: Account, seen: Seen) -> None:
    """Click "Connect <CRM>" with the sandbox's consent set to the account; land on its page."""
    steer(account.sandbox, next_account=account.external_id)
    page.goto(f"{base}/admin/ops/connections")
    page.get_by_role("link", name=f"Connect {account.label}").click()
    page.wait_for_url(re.compile(r".*/admin/ops/connections/\d+$"))
    expect(page.get_by_role("status")).to_contain_text(f"{account.label} {account.external_id}: connected.")
    account.connection_id = int(page.url.rsplit("/", 1)[1])
    expect(page.locator("#account-id")).to_have_text(account.external_id)
    if account.crm == "salesforce":  # its webhook secret, shown this once
        account.webhook_secret = page.locator("#new-webhook-secret").inner_text().strip()
        assert account.webhook_secret
        seen.once_views.append((f"once-view {account.external_id}", page.content()))
        page.reload()
        expect(page.locator("#account-id")).to_have_text(account.external_id)
        assert page.locator("#new-webhook-secret").count() == 0
    else:
        assert page.locator("#new-webhook-secret").count() == 0
    seen.page(page, f"connection {account.external_id}")


def seed(account: Account, bystander: bool = False, prefix: str = "") -> None:
    """Contacts with emails of the account's own, and (unless a bystander) a list/campaign of them."""
    tag = f"{prefix}{account.crm}-{account.external_id}".lower()
    emails = [f"{tag}-{n}@example.com" for n in range(CONTACTS_PER_ACCOUNT)]
    url = f"{account.sandbox.url}/_sandbox/seed"
    params = {"account": account.external_id}
    if account.crm == "hubspot":
        body: dict[str, Any] = {"contacts": [{"properties": {"email": e}} for e in emails]}
        ids = requests.post(url, params=params, json=body, timeout=10).json()["contactIds"]
        if not bystander:
            lists = {"lists": [{"name": f"list {tag}", "contactIds": ids}]}
            ref = requests.post(url, params=params, json=lists, timeout=10).json()["listIds"][0]
    else:
        body = {"contacts": [{"Email": e, "LastName": f"L{n}"} for n, e in enumerate(emails)]}
        ids = requests.post(url, params=params, json=body, timeout=10).json()["contacts"]
        if not bystander:
            campaign = {
                "campaigns": [{"Name": f"campaign {tag}", "members": [{"ContactId": i} for i in ids]}]
            }
            ref = requests.post(url, params=params, json=campaign, timeout=10).json()["campaigns"][0]["Id"]
    account.emails, account.record_ids = emails, [str(i) for i in ids]
    if not bystander:
        account.ref = str(ref)


def flags(account: Account) -> dict[str, str | None]:
    """{email: the status flag written} for every record of the account in its sandbox."""
    params: dict[str, Any] = {"account": account.external_id, "offset": 0, "limit": 1000}
    if account.crm == "hubspot":
        params["property"] = ["email", HUBSPOT_FLAG]
        found = requests.get(f"{account.sandbox.url}/_sandbox/contacts", params=params, timeout=10).json()
        return {c["properties"].get("email"): c["properties"].get(HUBSPOT_FLAG) for c in found["contacts"]}
    params.update(object="Contact", field=["Email", SALESFORCE_FLAG])
    found = requests.get(f"{account.sandbox.url}/_sandbox/records", params=params, timeout=10).json()
    items = found["records"] if isinstance(found, dict) else found
    return {r.get("Email"): r.get(SALESFORCE_FLAG) for r in items}


class Api:
    """The admin API, every answer kept for the final grep."""

    def __init__(self, base: str, seen: Seen) -> None:
        self.base = base
        self.seen = seen
        self.headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

    def call(self, method: str, path: str, body: object = None) -> requests.Response:
        answer = requests.request(method, f"{self.base}{path}", json=body, headers=self.headers, timeout=15)
        self.seen.api.append((f"{method} {path}", answer.text))
        return answer


def stored_tokens(runtime: Runtime) -> set[str]:
    """Every access and refresh token the connections hold now (decrypted)."""
    box = SecretBox([SECRET_KEY])
    found: set[str] = set()
    with runtime.session() as session:
        for sealed in session.scalars(
            select(Connection.credentials).where(Connection.credentials.is_not(None))
        ):
            held = box.open(sealed)
            found.update(str(held[k]) for k in ("access_token", "refresh_token") if held.get(k))
    return found


def issued_tokens(hubspot: SandboxServer, salesforce: SandboxServer) -> set[str]:
    """Every token the sandboxes' OAuth servers issued (their in-memory books), refreshed ones too."""
    found: set[str] = set()
    authority = hubspot.app.extensions.get("hubspot_oauth")
    for name in ("_access", "_refresh"):
        found.update(getattr(authority, name, {}) or {})
    book = getattr(salesforce.app.extensions.get("salesforce_sandbox"), "oauth", None)
    for name in ("access", "refresh"):
        found.update(getattr(book, name, {}) or {})
    return {token for token in found if token}


def hubspot_event(portal: int, event_id: int, contact_id: str, email: str) -> dict[str, Any]:
    return {
        "eventId": event_id, "subscriptionId": 9, "portalId": portal, "appId": 1,
        "occurredAt": int(time.time() * 1000), "subscriptionType": "contact.propertyChange",
        "attemptNumber": 0, "objectId": int(contact_id), "changeSource": "CRM_UI",
        "propertyName": "email", "propertyValue": email,
    }  # fmt: skip


def post_hubspot(base: str, events: list[dict[str, Any]]) -> requests.Response:
    raw = json.dumps(events).encode()
    stamp = str(int(time.time() * 1000))
    url = f"{base}/webhooks/hubspot"
    headers = {"Content-Type": "application/json", "X-HubSpot-Request-Timestamp": stamp,
               "X-HubSpot-Signature-v3": sign(HUBSPOT_APP[1], "POST", url, raw, stamp)}  # fmt: skip
    return requests.post(url, data=raw, headers=headers, timeout=10)


def waiting_connection_ids(runtime: Runtime) -> list[int]:
    with runtime.session() as session:
        return list(
            session.scalars(
                select(CoalescedContact.connection_id)
                .where(CoalescedContact.sync_id.is_(None))
                .order_by(CoalescedContact.id)
            )
        )


def settled(runtime: Runtime, sync_ids: list[int]) -> bool:
    with runtime.session() as session:
        statuses = session.scalars(select(Sync.status).where(Sync.id.in_(sync_ids))).all()
    return len(statuses) == len(sync_ids) and all(
        s in (SyncStatus.COMPLETED, SyncStatus.FAILED, SyncStatus.CANCELLED) for s in statuses
    )


# ---- the run ----------------------------------------------------------------------------------------


def test_two_portals_and_two_orgs_installed_in_chromium_sync_route_and_leak_nothing(
    install_runtime: Runtime,
    hubspot: SandboxServer,
    salesforce: SandboxServer,
    web_port: int,
    browser: Browser,
    tmp_path: Path,
) -> None:
    runtime = install_runtime
    env = process_env(runtime)
    logs = [tmp_path / "web.log", tmp_path / "worker1.log", tmp_path / "worker2.log"]
    web = start_web(env, logs[0], port=web_port, workers=2)
    workers = [start_worker(env, log) for log in logs[1:]]
    base = web.url
    assert base == runtime.settings.public_base_url
    seen = Seen()
    api = Api(base, seen)
    accounts = [
        *(Account("hubspot", "HubSpot", hubspot, portal) for portal in PORTALS),
        *(Account("salesforce", "Salesforce", salesforce, org) for org in ORGS),
    ]
    portal_a, portal_b, org_a, org_b = accounts
    try:
        context = browser.new_context(viewport={"width": 1280, "height": 800})
        context.set_default_timeout(15_000)
        page = context.new_page()
        callbacks: list[str] = []
        page.on("request", lambda r: callbacks.append(r.url) if "/callback?" in r.url else None)

        # ---- sign in, install four accounts by clicking ----
        page.goto(f"{base}/admin/")
        page.fill("#token", ADMIN_TOKEN)
        page.get_by_role("button", name="Sign in").click()
        page.get_by_role("link", name="Connections").click()
        expect(page.get_by_role("link", name="Connect HubSpot")).to_be_visible()
        expect(page.get_by_role("link", name="Connect Salesforce")).to_be_visible()
        for account in accounts:
            install(page, base, account, seen)
        assert len({a.connection_id for a in accounts}) == 4
        assert len(callbacks) == 4 and all(u.startswith(f"{base}/admin/connect/") for u in callbacks)
        for account in accounts:
            assert oauth_counts(account.sandbox, account.external_id)["code_grants"] == 1

        page.goto(f"{base}/admin/ops/connections")
        listing = seen.page(page, "connections")
        for account in accounts:
            row = page.locator(f'tr[data-connection-id="{account.connection_id}"]')
            expect(row).to_contain_text(account.external_id)
            expect(row.locator(".badge")).to_have_text("connected")
            expect(row).to_contain_text(f"{base}/webhooks/{account.crm}")
        assert "Reconnect" not in listing

        # ---- forged state, replayed callback URL: refused, nothing stored ----
        before = connection_count(runtime)
        forged = page.goto(f"{base}/admin/connect/hubspot/callback?code=forged-code&state=forged-state")
        assert forged is not None and forged.status == 400
        expect(page.locator("#error-message")).to_contain_text("not valid")
        seen.page(page, "forged state")
        replayed = page.goto(callbacks[1])  # portal B's callback, code and state already used
        assert replayed is not None and replayed.status == 400
        expect(page.locator("#error-message")).to_contain_text("not valid")
        seen.page(page, "replayed callback")
        # A used code under a fresh state of this session: the connector's redirect to the consent page
        # is swapped for one straight back with portal B's old code, as a replayed captured code would.
        old_code = parse_qs(urlsplit(callbacks[1]).query)["code"][0]

        def replay_code(route: Route) -> None:
            consent = route.fetch(max_redirects=0)  # the real 302, its state bound to this session
            state = parse_qs(urlsplit(consent.headers["location"]).query)["state"][0]
            back = f"{base}/admin/connect/hubspot/callback?{urlencode({'code': old_code, 'state': state})}"
            route.fulfill(status=302, headers={"Location": back})

        page.goto(f"{base}/admin/ops/connections")
        page.route(f"{base}/admin/connect/hubspot", replay_code)
        with page.expect_response(lambda r: "/callback?" in r.url) as replay:
            page.get_by_role("link", name="Connect HubSpot").click()
        assert replay.value.status == 400 and old_code in replay.value.url
        expect(page.locator("#error-message")).to_contain_text("nothing was connected")
        seen.page(page, "replayed code")
        page.unroute(f"{base}/admin/connect/hubspot")
        page.get_by_role("link", name="Back to the connections").click()
        expect(page.locator("table#connections")).to_be_visible()
        assert connection_count(runtime) == before
        assert oauth_counts(hubspot, portal_b.external_id)["code_grants"] == 1

        # ---- a segment on each connection syncs, through the admin API ----
        bystanders = [  # the default portal and org: nothing of this run may touch them
            Account("hubspot", "HubSpot", hubspot, hubspot.app.extensions["hubspot_portals"].default_id),
            Account(
                "salesforce",
                "Salesforce",
                salesforce,
                salesforce.app.extensions["salesforce_sandbox"].template.org_id,
            ),
        ]
        for account in [*accounts, *bystanders]:
            seed(account, bystander=account in bystanders)
        for account in accounts:
            segment = {
                "crm": account.crm, "type": "email", "connection_id": account.connection_id,
                "ref": account.ref, "name": f"segment of {account.external_id}",
                **({"kind": "hubspot_list"} if account.crm == "hubspot"
                   else {"kind": "salesforce_campaign", "object": "Contact"}),
            }  # fmt: skip
            created = api.call("POST", "/admin/segments", segment)
            assert created.status_code == 201, created.text
            account.segment_id = created.json()["id"]
            started = api.call("POST", f"/admin/segments/{account.segment_id}/sync")
            assert started.status_code == 202, started.text
            account.sync_id = started.json()["id"]
        wait_for(lambda: settled(runtime, [a.sync_id for a in accounts]), 120, "the four segment syncs")
        for account in accounts:
            sync = api.call("GET", f"/admin/syncs/{account.sync_id}").json()
            assert sync["status"] == "completed", sync
            assert sync["connection_id"] == account.connection_id
            assert sync["counts"]["contacts"] == CONTACTS_PER_ACCOUNT and not sync["counts"].get(
                "write_failed"
            )
            with runtime.session() as session:
                verified = set(
                    session.scalars(select(SyncValue.value).where(SyncValue.sync_id == account.sync_id))
                )
            assert verified == set(account.emails)  # read from its own portal/org, no other
            written = flags(account)
            assert set(written) == set(account.emails)  # nothing of another account was written here
            assert all(written[e] for e in account.emails), written
        for bystander in bystanders:
            assert not any(flags(bystander).values()), "a default portal/org got flags"
        page.goto(f"{base}/admin/ops/connections/{portal_a.connection_id}")
        expect(page.locator(f'#segments tr[data-segment-id="{portal_a.segment_id}"]')).to_be_visible()
        seen.page(page, "portal A with its segment")
        page.goto(f"{base}/admin/?refresh=0")
        seen.page(page, "syncs")
        api.call("GET", "/admin/connections")
        api.call("GET", f"/admin/connections/{org_b.connection_id}")
        api.call("GET", "/admin/syncs")

        # ---- webhooks: portal B's lands on B's connection, org B's by its own secret ----
        late = Account("hubspot", "HubSpot", hubspot, portal_b.external_id)
        seed(
            late, bystander=True, prefix="late-"
        )  # a contact of portal B on no list: only the webhook can flag it
        late_email, late_id = late.emails[0], late.record_ids[0]
        answer = post_hubspot(base, [hubspot_event(int(portal_b.external_id), 5001, late_id, late_email)])
        assert answer.status_code == 200 and answer.json() == {"accepted": 1}, answer.text
        assert waiting_connection_ids(runtime) == [portal_b.connection_id]
        foreign = post_hubspot(base, [hubspot_event(FOREIGN_PORTAL, 5002, late_id, "x@example.com")])
        assert foreign.status_code == 403, foreign.text
        assert org_b.webhook_secret
        callout = requests.post(
            f"{base}/webhooks/salesforce", timeout=10,
            json={"records": [{"Id": org_b.record_ids[0], "Email": org_b.emails[0]}]},
            headers={"X-Connector-Token": org_b.webhook_secret},
        )  # fmt: skip
        assert callout.status_code == 200, callout.text
        wrong = requests.post(
            f"{base}/webhooks/salesforce", json={"records": []}, timeout=10,
            headers={"X-Connector-Token": org_b.webhook_secret[:-2] + "xx"},
        )  # fmt: skip
        assert wrong.status_code == 401, wrong.text  # DESIGN: a wrong token → 401
        assert sorted(waiting_connection_ids(runtime)) == sorted(
            [portal_b.connection_id, org_b.connection_id]
        )
        webhook_syncs = flush_due_buffers(runtime)
        assert len(webhook_syncs) == 2
        wait_for(lambda: settled(runtime, webhook_syncs), 60, "the webhook syncs")
        with runtime.session() as session:
            found = session.execute(select(Sync.connection_id, Sync.status).where(Sync.id.in_(webhook_syncs)))
            routed = {connection_id: status for connection_id, status in found}
        assert routed == {portal_b.connection_id: "completed", org_b.connection_id: "completed"}
        assert flags(late)[late_email]  # flagged in portal B
        assert late_email not in flags(portal_a)

        # ---- disconnect in the page: revoked at the sandbox ----
        tokens = stored_tokens(runtime)  # before disconnect forgets them
        assert len(tokens) >= 8
        for account in (portal_a, org_a):
            page.goto(f"{base}/admin/ops/connections/{account.connection_id}")
            page.get_by_role("button", name="Disconnect").click()
            expect(page.get_by_role("status")).to_contain_text("is disconnected")
            expect(page.locator("#status .badge")).to_have_text("disconnected")
            assert page.get_by_role("button", name="Disconnect").count() == 0
            seen.page(page, f"disconnected {account.external_id}")
            assert oauth_counts(account.sandbox, account.external_id)["revoked"] >= 1
        for account in (portal_b, org_b):
            assert oauth_counts(account.sandbox, account.external_id)["revoked"] == 0
        gone = post_hubspot(base, [hubspot_event(int(portal_a.external_id), 5003, "1", "y@example.com")])
        assert gone.status_code == 403  # a disconnected portal's deliveries are refused
        page.goto(f"{base}/admin/ops/connections")
        seen.page(page, "connections after disconnect")
        api.call("GET", "/admin/connections")
        for path in ("/metrics", "/openapi.json"):  # what a scraper or a client generator reads
            seen.api.append((path, requests.get(f"{base}{path}", timeout=10).text))
        context.close()
    finally:
        for worker in workers:
            kill(worker)
        web.kill()

    # ---- nothing secret in the logs, the pages or the API answers ----
    issued = issued_tokens(hubspot, salesforce)
    assert len(issued) >= 8 and tokens <= issued  # the sandboxes' books: every token, refreshed ones too
    tokens |= issued
    webhook_secrets = [a.webhook_secret for a in accounts if a.webhook_secret]
    secrets = {
        **{f"token {t[:6]}…": t for t in tokens},
        **{f"webhook secret {s[:4]}…": s for s in webhook_secrets},
        "HUBSPOT_CLIENT_SECRET": HUBSPOT_APP[1],
        "SALESFORCE_CLIENT_SECRET": SALESFORCE_APP[1],
        "CONNECTOR_SECRET_KEY": SECRET_KEY,
        "ADMIN_TOKEN": ADMIN_TOKEN,
    }
    logged = [(str(log.name), log.read_text(encoding="utf-8", errors="replace")) for log in logs]
    assert any("connection_installed" in text for _, text in logged), "the logs are not the processes'"
    places = [*logged, *seen.pages, *seen.api]
    leaks = [(what, where) for what, secret in secrets.items() for where, text in places if secret in text]
    assert leaks == []
    # A once-view page shows its own new webhook secret, and nothing else secret.
    for where, html in seen.once_views:
        own = [s for s in webhook_secrets if s in html]
        assert len(own) == 1, where
        assert [what for what, secret in secrets.items() if secret in html and secret not in own] == []
