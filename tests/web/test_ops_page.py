"""The ops page in a real headless Chromium (Playwright), against the connector app on a real port.

Syncs run for real against the ApexVerify sandbox; their steps are driven in this process
(drive_until_settled) while the browser works the page.
"""

from __future__ import annotations

import io
import json
import re
import time
from datetime import timedelta
from pathlib import Path

import pytest
import requests
from openpyxl import load_workbook
from playwright.sync_api import Locator, Page, expect
from sqlalchemy import select

from connector.models import Segment, Sync, SyncBatch, SyncStatus
from connector.pipeline.drive import drive_until_settled
from connector.pipeline.segments import create_segment
from connector.pipeline.syncs import ensure_connection
from connector.runtime import Runtime, set_runtime
from connector.sandbox.server import SandboxServer, serve_in_thread
from connector.web import create_app
from tests.conftest import with_settings
from tests.web.test_admin_api import file_sync

TOKEN = "test-admin-token"
COOKIE = "connector_ops"
HOSTILE = '<img src=x onerror="window.pwned=1">'


def sign_in(page: Page, web: SandboxServer, token: str = TOKEN) -> None:
    page.goto(f"{web.url}/admin/")
    page.fill("#token", token)
    page.get_by_role("button", name="Sign in").click()


def open_sync(page: Page, web: SandboxServer, sync_id: int) -> None:
    page.goto(f"{web.url}/admin/ops/syncs/{sync_id}?refresh=0")


def status_badge(page: Page) -> Locator:
    return page.locator("#status .badge")


def session_cookie(page: Page) -> str:
    return next(c["value"] for c in page.context.cookies() if c["name"] == COOKIE)


def failed_for_credits(runtime: Runtime, tmp_path: Path, values: int = 5) -> int:
    """A sync that really fails: the sandbox account has 1 credit, the launch gets 402."""
    base = runtime.settings.apexverify_base_url
    requests.post(f"{base}/_sandbox/config", json={"credits": 1}, timeout=5).raise_for_status()
    sync_id = file_sync(runtime, tmp_path, [f"r{n}@example.com" for n in range(values)], name="failing.txt")
    requests.post(f"{base}/_sandbox/config", json={"add_credits": 1000}, timeout=5).raise_for_status()
    return sync_id


def failed_for_internal_error(runtime: Runtime, tmp_path: Path) -> int:
    """A sync whose launched (and charged) batch ApexVerify reports as internal_error."""
    base = runtime.settings.apexverify_base_url
    fault = {"endpoint": "status", "kind": "internal_error", "count": 1}
    requests.post(f"{base}/_sandbox/faults", json=fault, timeout=5).raise_for_status()
    return file_sync(runtime, tmp_path, [f"i{n}@example.com" for n in range(5)], name="broken.txt")


def assert_one_launch_and_charge_per_batch(runtime: Runtime, sync_id: int) -> None:
    """What the ApexVerify sandbox saw: each of the sync's batches launched and charged exactly once."""
    state = requests.get(f"{runtime.settings.apexverify_base_url}/_sandbox/state", timeout=5).json()
    with runtime.session() as session:
        ours = set(session.scalars(select(SyncBatch.batch_uuid).where(SyncBatch.sync_id == sync_id)))
    launched = {b["batch_uuid"]: b["launch_count"] for b in state["batches"] if b["launch_count"]}
    assert set(launched) == ours and set(launched.values()) == {1}
    assert state["charges"] == state["launches"] == len(ours)


def sync_status(runtime: Runtime, sync_id: int) -> str:
    with runtime.session() as session:
        return session.get_one(Sync, sync_id).status


# --- Signing in --------------------------------------------------------------------------------


def test_a_wrong_token_is_refused_the_right_one_opens_the_syncs_and_sign_out_works(
    web: SandboxServer, page: Page
) -> None:
    page.goto(f"{web.url}/admin/")
    assert page.url.endswith("/admin/ops/sign-in")
    page.fill("#token", "not-the-token")
    with page.expect_response(lambda r: r.request.method == "POST") as answer:
        page.get_by_role("button", name="Sign in").click()
    assert answer.value.status == 401
    expect(page.get_by_role("alert")).to_have_text("That is not the admin token.")
    assert "not-the-token" not in page.content()  # the typed token is never echoed back

    sign_in(page, web)
    assert page.url == f"{web.url}/admin/"
    expect(page.locator("table#syncs")).to_be_visible()

    page.get_by_role("button", name="Sign out").click()
    expect(page.locator("#token")).to_be_visible()
    page.goto(f"{web.url}/admin/ops/segments")
    assert page.url.endswith("/admin/ops/sign-in")


def test_failed_sign_ins_share_the_admin_api_throttle(web: SandboxServer) -> None:
    client = requests.Session()
    form = client.get(f"{web.url}/admin/ops/sign-in", timeout=5).text
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', form).group(1)
    url = f"{web.url}/admin/ops/sign-in"
    codes = [
        client.post(url, data={"token": "x", "csrf_token": csrf}, timeout=5).status_code for _ in range(20)
    ]
    refused = client.post(url, data={"token": "x", "csrf_token": csrf}, timeout=5)
    assert (
        codes == [401] * 20 and refused.status_code == 429 and 0 < int(refused.headers["Retry-After"]) <= 60
    )
    api = requests.get(f"{web.url}/admin/syncs", headers={"Authorization": "Bearer x"}, timeout=5)
    assert api.status_code == 429  # one budget of failed attempts per address, page and API
    right = client.post(url, data={"token": TOKEN, "csrf_token": csrf}, allow_redirects=False, timeout=5)
    assert right.status_code == 429 and "Set-Cookie" not in right.headers  # the right token waits too


def test_the_page_is_off_without_an_admin_token(no_admin_token: Runtime, web: SandboxServer) -> None:
    for path in ("/admin/", "/admin/ops/sign-in"):
        answer = requests.get(f"{web.url}{path}", timeout=5)
        assert answer.status_code == 503 and "the admin is off" in answer.text
        assert "Set-Cookie" not in answer.headers


# --- Operator actions --------------------------------------------------------------------------


@pytest.mark.parametrize("failure", ["insufficient_credits", "apexverify_internal_error"])
def test_a_failed_sync_retried_in_the_browser_completes_and_charges_once_per_batch(
    runtime: Runtime, web: SandboxServer, page: Page, tmp_path: Path, failure: str
) -> None:
    make_failed = failed_for_credits if failure == "insufficient_credits" else failed_for_internal_error
    sync_id = make_failed(runtime, tmp_path)
    sign_in(page, web)
    open_sync(page, web, sync_id)
    expect(status_badge(page)).to_have_text("failed")
    expect(page.locator("#error")).to_contain_text(failure)
    expect(page.get_by_role("button", name="Approve")).to_have_count(0)

    page.get_by_role("button", name="Retry").click()
    expect(page.get_by_role("status")).to_contain_text(f"Sync {sync_id}: retry done")
    expect(page.get_by_role("button", name="Retry")).to_have_count(0)
    assert drive_until_settled(runtime, sync_id).status == SyncStatus.COMPLETED

    # The page refreshes itself while the sync runs, and stops once it has settled.
    expect(status_badge(page)).to_have_text("completed", timeout=15_000)
    expect(page.locator("#timeline")).to_contain_text(f"retry after {failure}")
    assert page.locator('meta[http-equiv="refresh"]').count() == 0
    assert_one_launch_and_charge_per_batch(runtime, sync_id)
    with runtime.session() as session:
        batches = len(session.get_one(Sync, sync_id).batches)
    assert batches == (1 if failure == "insufficient_credits" else 2)  # a broken batch is never relaunched


def test_approve_and_cancel_buttons_and_a_stale_page(
    runtime: Runtime, web: SandboxServer, page: Page, tmp_path: Path
) -> None:
    costly = file_sync(
        runtime, tmp_path, [f"a{n}@example.com" for n in range(10)], name="a.txt", max_net_cost=1
    )
    waiting = file_sync(
        runtime, tmp_path, [f"b{n}@example.com" for n in range(10)], name="b.txt", max_net_cost=1
    )
    sign_in(page, web)

    open_sync(page, web, costly)
    expect(status_badge(page)).to_have_text("awaiting_approval")
    expect(page.get_by_role("button", name="Retry")).to_have_count(0)
    page.get_by_role("button", name="Approve").click()
    expect(page.get_by_role("status")).to_contain_text("approve done; it is now launching")
    assert drive_until_settled(runtime, costly).status == SyncStatus.COMPLETED
    open_sync(page, web, costly)
    expect(status_badge(page)).to_have_text("completed")
    expect(page.get_by_role("button", name="Cancel")).to_have_count(0)

    stale = page.context.new_page()  # a second operator with the same sync open
    open_sync(stale, web, waiting)
    open_sync(page, web, waiting)
    page.get_by_role("button", name="Cancel").click()
    expect(status_badge(page)).to_have_text("cancelled")
    stale.get_by_role("button", name="Approve").click()
    expect(stale.get_by_role("status")).to_contain_text(f"sync {waiting} is cancelled, not awaiting approval")
    expect(status_badge(stale)).to_have_text("cancelled")
    assert sync_status(runtime, waiting) == SyncStatus.CANCELLED


def test_sync_now_on_a_segment_starts_a_sync_and_shows_it(
    runtime: Runtime, web: SandboxServer, page: Page
) -> None:
    segment = create_segment(
        runtime,
        {"crm": "hubspot", "kind": "hubspot_list", "ref": "42", "name": HOSTILE, "schedule": "0 3 * * *",
         "max_net_cost": 250},
    )  # fmt: skip
    sign_in(page, web)
    page.get_by_role("link", name="Segments").click()
    row = page.locator(f'tr[data-segment-id="{segment.id}"]')
    expect(row).to_contain_text(HOSTILE)  # shown as text, never as markup
    expect(row).to_contain_text("never")
    expect(row).to_contain_text("0 3 * * *")

    row.get_by_role("button", name="Sync now").click()
    expect(page).to_have_url(re.compile(r"/admin/ops/syncs/\d+$"))
    sync_id = int(page.url.rsplit("/", 1)[1])
    expect(status_badge(page)).to_have_text("pending")
    with runtime.session() as session:
        sync = session.get_one(Sync, sync_id)
        assert (sync.segment_id, sync.trigger) == (segment.id, "admin")

    page.goto(f"{web.url}/admin/ops/segments")
    expect(row.get_by_role("link", name=f"#{sync_id}")).to_be_visible()
    row.get_by_role("button", name="Sync now").click()  # still running: the same sync, not a second one
    expect(page).to_have_url(re.compile(rf"/admin/ops/syncs/{sync_id}$"))
    with runtime.session() as session:
        assert len(session.scalars(select(Sync).where(Sync.segment_id == segment.id)).all()) == 1
    assert page.evaluate("window.pwned") is None


def test_results_download_with_the_session_cookie(
    runtime: Runtime, web: SandboxServer, page: Page, tmp_path: Path
) -> None:
    sync_id = file_sync(runtime, tmp_path, ["ok@example.com", "=HYPERLINK(1)@evil.com"])
    sign_in(page, web)
    open_sync(page, web, sync_id)
    with page.expect_download() as download:
        page.get_by_role("link", name="Download JSON").click()
    assert download.value.suggested_filename == f"sync-{sync_id}-results.json"
    verdicts = json.loads(Path(download.value.path()).read_text(encoding="utf-8"))
    assert verdicts["ok@example.com"]["status"] == "valid"

    xlsx = page.request.get(f"{web.url}/admin/ops/syncs/{sync_id}/results.xlsx")  # the context's cookie
    rows = list(load_workbook(io.BytesIO(xlsx.body())).active.values)
    assert rows[0][:2] == ("value", "status")
    assert {r[0] for r in rows[1:]} == {"ok@example.com", "'=hyperlink(1)@evil.com"}

    anonymous = requests.get(f"{web.url}/admin/ops/syncs/{sync_id}/results.json", allow_redirects=False)
    assert anonymous.status_code == 302 and anonymous.headers["Location"] == "/admin/ops/sign-in"


# --- CSRF, cookies, secrets --------------------------------------------------------------------


def test_a_post_without_the_csrf_token_is_refused(
    runtime: Runtime, web: SandboxServer, page: Page, tmp_path: Path
) -> None:
    sync_id = failed_for_credits(runtime, tmp_path, values=2)
    sign_in(page, web)
    cookies = {COOKIE: session_cookie(page)}
    url = f"{web.url}/admin/ops/syncs/{sync_id}/retry"
    for form in ({}, {"csrf_token": "forged"}, {"csrf_token": ""}):
        answer = requests.post(url, data=form, cookies=cookies, allow_redirects=False, timeout=5)
        assert answer.status_code == 400 and "CSRF" in answer.text, form
    assert page.request.post(url, fail_on_status_code=False).status == 400
    assert sync_status(runtime, sync_id) == SyncStatus.FAILED
    assert runtime.queue().count == 0  # nothing was scheduled

    # A token from another browser's session does not work with this one's cookie either.
    other = requests.Session()
    foreign = re.search(
        r'name="csrf_token" value="([^"]+)"', other.get(f"{web.url}/admin/ops/sign-in").text
    ).group(1)
    answer = requests.post(url, data={"csrf_token": foreign}, cookies=cookies, allow_redirects=False)
    assert answer.status_code == 400 and sync_status(runtime, sync_id) == SyncStatus.FAILED


def set_cookie(response: requests.Response) -> str:
    return response.raw.headers.get("Set-Cookie", "")


def test_session_cookie_flags_lifetime_and_token_rotation(
    runtime: Runtime, web: SandboxServer, page: Page, monkeypatch: pytest.MonkeyPatch
) -> None:
    plain = set_cookie(requests.get(f"{web.url}/admin/ops/sign-in", timeout=5))
    assert plain.startswith(f"{COOKIE}=") and "HttpOnly" in plain and "SameSite=Lax" in plain
    assert "Secure" not in plain and "Path=/admin" in plain
    form = requests.get(f"{web.url}/admin/ops/sign-in", headers={"X-Forwarded-Proto": "https"}, timeout=5)
    assert "; Secure" in set_cookie(form)
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', form.text).group(1)
    signed = requests.post(  # by hand: a client keeps a Secure cookie from plain http
        f"{web.url}/admin/ops/sign-in",
        data={"token": TOKEN, "csrf_token": csrf},
        cookies={COOKIE: form.cookies[COOKIE]},
        headers={"X-Forwarded-Proto": "https"},
        allow_redirects=False,
    )
    assert signed.status_code == 302
    assert all(flag in set_cookie(signed) for flag in ("; Secure", "HttpOnly", "SameSite=Lax", "Expires="))

    sign_in(page, web)
    (cookie,) = [c for c in page.context.cookies() if c["name"] == COOKIE]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax" and not cookie["secure"]
    assert 11 * 3600 < cookie["expires"] - time.time() <= 12 * 3600

    # A session signed with another admin token is no session: changing the token signs everyone out.
    rotated = serve_in_thread(create_app(runtime=with_settings(runtime, admin_token="a-new-admin-token-02")))
    try:
        answer = requests.get(
            f"{rotated.url}/admin/", cookies={COOKIE: cookie["value"]}, allow_redirects=False
        )
        assert answer.status_code == 302 and answer.headers["Location"] == "/admin/ops/sign-in"
    finally:
        rotated.stop()
        set_runtime(runtime)

    # The lifetime counts from sign-in, however often the page refreshes itself.
    monkeypatch.setattr("connector.web.ops.SESSION_LIFETIME", timedelta(seconds=1))
    time.sleep(1.1)
    page.goto(f"{web.url}/admin/")
    assert page.url.endswith("/admin/ops/sign-in")


@pytest.fixture
def secretive(runtime: Runtime) -> Runtime:
    return with_settings(
        runtime,
        hubspot_access_token="hs-secret-token-123",
        hubspot_client_secret="hs-client-secret-456",
        salesforce_access_token="00Dsf!session-789",
        salesforce_webhook_token="sf-webhook-token-012",
    )


def test_no_page_shows_the_admin_token_or_any_secret(
    secretive: Runtime, web: SandboxServer, page: Page, tmp_path: Path
) -> None:
    runtime = secretive
    sync_id = failed_for_credits(runtime, tmp_path, values=2)
    create_segment(runtime, {"crm": "hubspot", "kind": "hubspot_list", "ref": "7"})
    secrets = runtime.settings.secrets()
    assert TOKEN in secrets and runtime.settings.apexverify_api_key in secrets
    (echoed,) = add_syncs(runtime, ["failed"])  # as if a CRM had echoed credentials into its error
    with runtime.session() as session:
        session.get_one(Sync, echoed).error_message = "refused: " + " & ".join(secrets)

    seen = []
    page.goto(f"{web.url}/admin/")
    seen.append(page.content())
    sign_in(page, web, token=TOKEN + "x")  # a near miss is not echoed either
    seen.append(page.content())
    sign_in(page, web)
    for path in ("/admin/", f"/admin/ops/syncs/{sync_id}", "/admin/ops/segments", "/admin/ops/syncs/999999"):
        page.goto(f"{web.url}{path}?refresh=0")
        seen.append(page.content())
    answer = page.goto(f"{web.url}/admin/ops/syncs/{echoed}?refresh=0")
    expect(page.locator("#error")).to_contain_text("refused: *** & ***")
    seen.append(page.content())
    assert "script-src" not in answer.headers["content-security-policy"]  # default-src 'none': no script
    assert answer.headers["x-frame-options"] == "DENY"
    page.get_by_role("link", name="Syncs", exact=True).click()
    page.get_by_role("link", name=f"#{sync_id}").click()
    page.get_by_role("button", name="Retry").click()
    seen.append(page.content())
    for html in seen:
        for secret in secrets:
            assert secret not in html


# --- The syncs table ---------------------------------------------------------------------------


def add_syncs(runtime: Runtime, statuses: list[str], segment_id: int | None = None) -> list[int]:
    """Sync rows as the pipeline leaves them, written straight to the database."""
    with runtime.session() as session:
        connection_id = ensure_connection(session, "file", "local", "local files").id
        syncs = [
            Sync(connection_id=connection_id, crm="file", type="email", target_country="US", trigger="cli",
                 name=f"{status} {n}", status=status, segment_id=segment_id, error_code="crm_error",
                 failed_step="writing_back", error_message=HOSTILE,
                 counts={"contacts": 3, "verified": 2, "skipped": 1}, cost={"net": 2.5})
            for n, status in enumerate(statuses)
        ]  # fmt: skip
        session.add_all(syncs)
        session.flush()
        return [s.id for s in syncs]


def test_the_syncs_table_filters_pages_and_refreshes(
    runtime: Runtime, web: SandboxServer, page: Page, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("connector.web.ops.PAGE_SIZE", 2)
    statuses = ["completed", "failed", "verifying", "failed", "awaiting_approval"]
    ids = add_syncs(runtime, statuses)
    segment = create_segment(runtime, {"crm": "hubspot", "kind": "hubspot_list", "ref": "9"})
    (of_segment,) = add_syncs(runtime, ["failed"], segment_id=segment.id)
    with runtime.session() as session:
        assert session.get(Segment, segment.id) is not None
    sign_in(page, web)

    def listed() -> list[int]:
        return [int(i) for i in page.locator("#syncs tbody tr").evaluate_all(
            "rows => rows.map(r => r.dataset.syncId).filter(Boolean)")]  # fmt: skip

    assert listed() == [of_segment, ids[4]]
    assert page.locator('meta[http-equiv="refresh"]').get_attribute("content") == "5"
    expect(page.locator(f'tr[data-sync-id="{ids[4]}"] .badge')).to_have_class(
        re.compile("b-awaiting_approval")
    )
    expect(page.locator(f'tr[data-sync-id="{ids[4]}"]')).to_contain_text(
        "3 contacts · 2 verified · 1 skipped"
    )
    page.locator("#older").click()
    assert listed() == [ids[3], ids[2]]

    page.goto(f"{web.url}/admin/?refresh=0")
    assert page.locator('meta[http-equiv="refresh"]').count() == 0
    page.locator("nav.filters").get_by_role("link", name="failed", exact=True).click()
    assert listed() == [of_segment, ids[3]] and "refresh=0" in page.url
    page.locator("#older").click()
    assert listed() == [ids[1]]
    assert page.locator('meta[http-equiv="refresh"]').count() == 0  # the choice survives paging

    page.fill('input[name="segment_id"]', str(segment.id))
    page.get_by_role("button", name="Filter").click()
    assert listed() == [of_segment]
    for status in SyncStatus:
        expect(page.locator("nav.filters").get_by_role("link", name=status.value, exact=True)).to_be_visible()

    page.goto(f"{web.url}/admin/ops/syncs/{ids[1]}?refresh=0")
    expect(page.locator("#error")).to_contain_text(HOSTILE)
    assert page.evaluate("window.pwned") is None
    assert (
        requests.get(f"{web.url}/admin/?status=bogus", cookies={COOKIE: session_cookie(page)}).status_code
        == 400
    )
