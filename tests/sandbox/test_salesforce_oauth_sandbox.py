"""The Salesforce sandbox's OAuth web-server flow with PKCE and its orgs, over real HTTP: consent,
code exchange, refresh, revoke, access tokens that expire, and API requests routed to the org their
token was issued for (REST query and Bulk API 2.0), with the /_sandbox/oauth controls.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from connector.sandbox.salesforce import create_app
from connector.sandbox.salesforce_ids import to_18
from connector.sandbox.server import SandboxServer, serve_in_thread

TOKEN = "00DDn0000000001!env-session"
CLIENT_ID = "3MVG9-oauth-client"
CLIENT_SECRET = "oauth-client-secret"
CALLBACK = "https://connector.example/admin/connect/salesforce/callback"
VERSION = "62.0"
DEFAULT_ORG = "00DDn0000000001"
ORG_A = "00D5g000004ABCD"  # named in 15 characters
ORG_B = "00D5g000007WXYZEA4"  # named in 18
ID_URL = re.compile(r"^(?P<host>http://[^/]+)/id/(?P<org>00D[0-9A-Za-z]{15})/(?P<user>005[0-9A-Za-z]{15})$")


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxServer]:
    app = create_app(access_token=TOKEN, client_id=CLIENT_ID, client_secret=CLIENT_SECRET, bulk_delay=0)
    server = serve_in_thread(app)
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def fresh(sandbox: SandboxServer) -> None:
    control(sandbox, "reset", {"all": True})


def control(
    sandbox: SandboxServer, name: str, body: dict[str, Any] | None = None, account: str | None = None
) -> dict[str, Any]:
    params = {"account": account} if account else {}
    response = requests.post(f"{sandbox.url}/_sandbox/{name}", json=body or {}, params=params, timeout=10)
    response.raise_for_status()
    return response.json()


def oauth_counts(sandbox: SandboxServer, account: str) -> dict[str, int]:
    response = requests.get(f"{sandbox.url}/_sandbox/oauth", params={"account": account}, timeout=5)
    response.raise_for_status()
    return response.json()


@dataclass
class Consent:
    verifier: str
    query: dict[str, list[str]]

    @property
    def code(self) -> str:
        return self.query["code"][0]


def challenge_of(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


def authorize(
    sandbox: SandboxServer, verifier: str = "v" * 43, state: str = "st-1", **overrides: str
) -> requests.Response:
    params = {
        "response_type": "code",
        "client_id": CLIENT_ID,
        "redirect_uri": CALLBACK,
        "state": state,
        "code_challenge": challenge_of(verifier),
        "code_challenge_method": "S256",
        **overrides,
    }
    response = requests.get(
        f"{sandbox.url}/services/oauth2/authorize", params=params, allow_redirects=False, timeout=5
    )
    return response


def consent(sandbox: SandboxServer, org: str | None = None, **overrides: str) -> Consent:
    """A consent for `org` (the next account) that redirects back with a code."""
    if org is not None:
        control(sandbox, "oauth", {"next_account": org})
    verifier = secrets.token_urlsafe(48)
    response = authorize(sandbox, verifier, **overrides)
    assert response.status_code == 302, response.text
    location = urlsplit(response.headers["Location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == CALLBACK
    return Consent(verifier, parse_qs(location.query))


def token_call(sandbox: SandboxServer, **form: str) -> requests.Response:
    form = {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, **form}
    return requests.post(f"{sandbox.url}/services/oauth2/token", data=form, timeout=5)


def exchange(sandbox: SandboxServer, given: Consent, verifier: str | None = None) -> requests.Response:
    return token_call(
        sandbox,
        grant_type="authorization_code",
        code=given.code,
        redirect_uri=CALLBACK,
        code_verifier=verifier if verifier is not None else given.verifier,
    )


def install(sandbox: SandboxServer, org: str | None = None) -> dict[str, Any]:
    response = exchange(sandbox, consent(sandbox, org))
    assert response.status_code == 200, response.text
    return response.json()


def refresh(sandbox: SandboxServer, refresh_token: str) -> requests.Response:
    return token_call(sandbox, grant_type="refresh_token", refresh_token=refresh_token)


def api(sandbox: SandboxServer, token: str, method: str, path: str, **kwargs: Any) -> requests.Response:
    url = f"{sandbox.url}/services/data/v{VERSION}/{path}"
    headers = {"Authorization": f"Bearer {token}"}
    return requests.request(method, url, headers=headers, timeout=10, **kwargs)


def query(sandbox: SandboxServer, token: str, soql: str) -> requests.Response:
    return api(sandbox, token, "GET", "query", params={"q": soql})


def emails(sandbox: SandboxServer, token: str) -> list[str]:
    response = query(sandbox, token, "SELECT Email FROM Contact")
    assert response.status_code == 200, response.text
    return sorted(record["Email"] for record in response.json()["records"])


def seed_contacts(sandbox: SandboxServer, account: str | None, *addresses: str) -> list[str]:
    contacts = [{"LastName": address.split("@")[0], "Email": address} for address in addresses]
    return control(sandbox, "seed", {"contacts": contacts}, account=account)["contacts"]


INVALID_SESSION = [{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}]


# ---- consent ----


def test_consent_redirects_back_with_a_code_and_the_state(sandbox: SandboxServer) -> None:
    given = consent(sandbox)
    assert given.query["state"] == ["st-1"] and len(given.code) > 20

    with_query = authorize(sandbox, redirect_uri=CALLBACK + "?tab=orgs")
    assert with_query.headers["Location"].startswith(CALLBACK + "?tab=orgs&code=")


def test_consent_refuses_a_foreign_client_or_a_relative_callback_without_redirecting(
    sandbox: SandboxServer,
) -> None:
    foreign = authorize(sandbox, client_id="someone-else")
    assert foreign.status_code == 400
    assert foreign.json() == {"error": "invalid_client_id", "error_description": "client identifier invalid"}
    assert authorize(sandbox, redirect_uri="/callback").json()["error"] == "redirect_uri_missing"


@pytest.mark.parametrize(
    ("overrides", "error", "description"),
    [
        ({"code_challenge": ""}, "invalid_request", "missing required code challenge"),
        ({"code_challenge_method": "plain"}, "invalid_request", "invalid code challenge method"),
        ({"response_type": "token"}, "unsupported_response_type", "response type not supported"),
    ],
)
def test_a_malformed_consent_request_redirects_back_with_the_error(
    sandbox: SandboxServer, overrides: dict[str, str], error: str, description: str
) -> None:
    response = authorize(sandbox, **overrides)
    assert response.status_code == 302
    assert parse_qs(urlsplit(response.headers["Location"]).query) == {
        "error": [error],
        "error_description": [description],
        "state": ["st-1"],
    }


def test_deny_next_denies_one_consent(sandbox: SandboxServer) -> None:
    assert control(sandbox, "oauth", {"deny_next": True})["deny_next"] is True
    denied = authorize(sandbox, state="st-denied")
    assert parse_qs(urlsplit(denied.headers["Location"]).query) == {
        "error": ["access_denied"],
        "error_description": ["end-user denied authorization"],
        "state": ["st-denied"],
    }
    assert "code" in consent(sandbox).query  # once only


# ---- code exchange ----


def test_code_exchange_answers_tokens_and_the_identity_url(sandbox: SandboxServer) -> None:
    answer = install(sandbox)
    assert list(answer) == [
        "access_token",
        "refresh_token",
        "instance_url",
        "id",
        "token_type",
        "issued_at",
        "signature",
        "scope",
    ]
    assert answer["instance_url"] == sandbox.url and answer["token_type"] == "Bearer"
    assert answer["scope"] == "api refresh_token"
    identity = ID_URL.match(answer["id"])
    assert identity is not None and identity["host"] == sandbox.url
    assert identity["org"] == to_18(DEFAULT_ORG) and to_18(identity["user"]) == identity["user"]
    assert answer["access_token"].startswith(DEFAULT_ORG + "!")
    signed = (answer["id"] + answer["issued_at"]).encode()  # HMAC-SHA256 keyed by the client secret
    expected = hmac.new(CLIENT_SECRET.encode(), signed, hashlib.sha256).digest()
    assert base64.b64decode(answer["signature"]) == expected
    assert query(sandbox, answer["access_token"], "SELECT COUNT() FROM Contact").status_code == 200
    assert oauth_counts(sandbox, DEFAULT_ORG)["code_grants"] == 1


def test_a_wrong_code_verifier_is_refused_and_uses_the_code_up(sandbox: SandboxServer) -> None:
    given = consent(sandbox)
    wrong = exchange(sandbox, given, verifier=secrets.token_urlsafe(48))
    assert wrong.status_code == 400
    assert wrong.json() == {"error": "invalid_grant", "error_description": "invalid code verifier"}
    assert exchange(sandbox, given).json() == {
        "error": "invalid_grant",
        "error_description": "expired authorization code",
    }
    assert exchange(sandbox, consent(sandbox)).status_code == 200


def test_a_code_is_single_use(sandbox: SandboxServer) -> None:
    given = consent(sandbox)
    assert exchange(sandbox, given).status_code == 200
    replay = exchange(sandbox, given)
    assert replay.status_code == 400
    assert replay.json() == {"error": "invalid_grant", "error_description": "expired authorization code"}
    assert oauth_counts(sandbox, DEFAULT_ORG)["code_grants"] == 1


def test_a_code_is_bound_to_its_callback_and_the_client_is_checked(sandbox: SandboxServer) -> None:
    given = consent(sandbox)
    moved = token_call(
        sandbox,
        grant_type="authorization_code",
        code=given.code,
        redirect_uri=CALLBACK + "/other",
        code_verifier=given.verifier,
    )
    assert moved.json() == {
        "error": "invalid_grant",
        "error_description": "redirect_uri must match configuration",
    }
    bad_secret = token_call(sandbox, grant_type="authorization_code", code="x", client_secret="wrong")
    assert bad_secret.json() == {"error": "invalid_client", "error_description": "invalid client credentials"}
    assert token_call(sandbox, grant_type="password").json()["error"] == "unsupported_grant_type"


def test_a_scope_without_refresh_token_gets_no_refresh_token(sandbox: SandboxServer) -> None:
    answer = exchange(sandbox, consent(sandbox, scope="api")).json()
    assert "refresh_token" not in answer and answer["scope"] == "api"


# ---- refresh, expiry, revocation ----


def test_refresh_grant_issues_a_new_access_token_and_keeps_the_refresh_token(sandbox: SandboxServer) -> None:
    installed = install(sandbox)
    renewed = refresh(sandbox, installed["refresh_token"])
    assert renewed.status_code == 200
    answer = renewed.json()
    assert "refresh_token" not in answer and answer["id"] == installed["id"]
    assert answer["access_token"] != installed["access_token"]
    assert refresh(sandbox, installed["refresh_token"]).status_code == 200  # still good
    assert query(sandbox, answer["access_token"], "SELECT COUNT() FROM Contact").status_code == 200
    assert oauth_counts(sandbox, DEFAULT_ORG)["refreshes"] == 2


def test_expired_tokens_get_invalid_session_id_until_refreshed(sandbox: SandboxServer) -> None:
    installed = install(sandbox, ORG_A)
    token = installed["access_token"]
    assert control(sandbox, "oauth", {"expire_tokens": True}, account=ORG_A)["expired_tokens"] == 1

    expired = query(sandbox, token, "SELECT Id FROM Contact")
    assert expired.status_code == 401 and expired.json() == INVALID_SESSION
    bulk = api(
        sandbox, token, "POST", "jobs/query", json={"operation": "query", "query": "SELECT Id FROM Contact"}
    )
    assert bulk.status_code == 401 and bulk.json() == INVALID_SESSION

    renewed = refresh(sandbox, installed["refresh_token"])
    assert renewed.status_code == 200
    assert query(sandbox, renewed.json()["access_token"], "SELECT Id FROM Contact").status_code == 200
    assert oauth_counts(sandbox, ORG_A) == {
        "code_grants": 1,
        "refreshes": 1,
        "revoked": 0,
        "refused_refreshes": 0,
        "expired_rejections": 2,
    }
    assert query(sandbox, TOKEN, "SELECT Id FROM Contact").status_code == 200  # the env session untouched


def test_access_tokens_expire_by_the_clock(sandbox: SandboxServer) -> None:
    assert control(sandbox, "oauth", {"token_ttl_seconds": 0.3})["token_ttl_seconds"] == 0.3
    token = install(sandbox)["access_token"]
    assert query(sandbox, token, "SELECT Id FROM Contact").status_code == 200
    time.sleep(0.4)
    expired = query(sandbox, token, "SELECT Id FROM Contact")
    assert expired.status_code == 401 and expired.json() == INVALID_SESSION
    assert oauth_counts(sandbox, DEFAULT_ORG)["expired_rejections"] == 1


def test_revoking_a_refresh_token_refuses_it_and_its_access_tokens(sandbox: SandboxServer) -> None:
    installed = install(sandbox, ORG_A)
    revoked = requests.post(
        f"{sandbox.url}/services/oauth2/revoke", data={"token": installed["refresh_token"]}, timeout=5
    )
    assert revoked.status_code == 200
    refused = refresh(sandbox, installed["refresh_token"])
    assert refused.status_code == 400
    assert refused.json() == {"error": "invalid_grant", "error_description": "expired access/refresh token"}
    assert query(sandbox, installed["access_token"], "SELECT Id FROM Contact").json() == INVALID_SESSION
    counts = oauth_counts(sandbox, ORG_A)
    assert (counts["revoked"], counts["refused_refreshes"], counts["expired_rejections"]) == (1, 1, 0)
    unknown = requests.post(f"{sandbox.url}/services/oauth2/revoke", data={"token": "nope"}, timeout=5)
    assert unknown.status_code == 400 and unknown.json()["error"] == "unsupported_token_type"


def test_revoke_refresh_tokens_control_refuses_the_orgs_refresh_tokens_only(sandbox: SandboxServer) -> None:
    in_a, in_b = install(sandbox, ORG_A), install(sandbox, ORG_B)
    answer = control(sandbox, "oauth", {"revoke_refresh_tokens": True}, account=ORG_A)
    assert answer["revoked_refresh_tokens"] == 1
    assert refresh(sandbox, in_a["refresh_token"]).json()["error"] == "invalid_grant"
    assert (
        query(sandbox, in_a["access_token"], "SELECT Id FROM Contact").status_code == 200
    )  # until it expires
    assert refresh(sandbox, in_b["refresh_token"]).status_code == 200
    assert oauth_counts(sandbox, ORG_A)["refused_refreshes"] == 1


# ---- orgs ----


def test_each_token_sees_its_own_org_only(sandbox: SandboxServer) -> None:
    token_a = install(sandbox, ORG_A)["access_token"]
    in_b = install(sandbox, ORG_B)
    token_b = in_b["access_token"]
    ids_b = seed_contacts(sandbox, ORG_B, "bea@b.example", "bo@b.example")
    ids_a = seed_contacts(sandbox, to_18(ORG_A), "ann@a.example")  # the 18-character form names it too
    seed_contacts(sandbox, None, "dee@default.example")

    assert emails(sandbox, token_a) == ["ann@a.example"]
    assert emails(sandbox, token_b) == ["bea@b.example", "bo@b.example"]
    assert emails(sandbox, TOKEN) == ["dee@default.example"]  # the env session: the default org
    assert not set(ids_a) & set(ids_b)  # ids never repeat across orgs
    record = api(sandbox, token_a, "GET", f"sobjects/Contact/{ids_b[0]}")
    assert record.status_code == 404
    assert in_b["id"].split("/")[-2] == ORG_B and in_b["access_token"].startswith(ORG_B[:15] + "!")


def test_bulk_jobs_and_results_stay_in_their_org(sandbox: SandboxServer) -> None:
    token_a = install(sandbox, ORG_A)["access_token"]
    token_b = install(sandbox, ORG_B)["access_token"]
    seed_contacts(sandbox, ORG_B, "bea@b.example")
    seed_contacts(sandbox, ORG_A, "ann@a.example")

    body = {"operation": "query", "query": "SELECT Email FROM Contact"}
    job_a = api(sandbox, token_a, "POST", "jobs/query", json=body).json()["id"]
    job_b = api(sandbox, token_b, "POST", "jobs/query", json=body).json()["id"]
    assert job_a != job_b
    assert api(sandbox, token_a, "GET", f"jobs/query/{job_a}").json()["state"] == "JobComplete"
    assert api(sandbox, token_a, "GET", f"jobs/query/{job_a}/results").text == '"Email"\n"ann@a.example"\n'
    assert api(sandbox, token_b, "GET", f"jobs/query/{job_b}/results").text == '"Email"\n"bea@b.example"\n'
    for path in (f"jobs/query/{job_a}", f"jobs/query/{job_a}/results"):
        foreign = api(sandbox, token_b, "GET", path)
        assert foreign.status_code == 404 and foreign.json()[0]["errorCode"] == "NOT_FOUND"
    listed = api(sandbox, token_b, "GET", "jobs/query").json()["records"]
    assert [job["id"] for job in listed] == [job_b]

    ingest = api(sandbox, token_a, "POST", "jobs/ingest", json={"object": "Contact", "operation": "update"})
    assert api(sandbox, token_b, "GET", f"jobs/ingest/{ingest.json()['id']}").status_code == 404


def test_counts_limits_and_state_are_kept_per_org(sandbox: SandboxServer) -> None:
    in_a = install(sandbox, ORG_A)
    install(sandbox, ORG_B)
    refresh(sandbox, in_a["refresh_token"])
    query(sandbox, in_a["access_token"], "SELECT Id FROM Contact")
    assert oauth_counts(sandbox, ORG_A)["refreshes"] == 1 and oauth_counts(sandbox, ORG_B)["refreshes"] == 0
    assert oauth_counts(sandbox, ORG_B)["code_grants"] == 1

    state_a = requests.get(f"{sandbox.url}/_sandbox/state", params={"account": ORG_A}, timeout=5).json()
    state_b = requests.get(f"{sandbox.url}/_sandbox/state", params={"account": ORG_B}, timeout=5).json()
    assert state_a["config"]["org_id"] == to_18(ORG_A) and state_a["api_usage"] == 1
    assert state_a["requests"]["POST /services/oauth2/token"] == 2  # code grant and refresh
    assert state_b["api_usage"] == 0 and "GET /services/data/v{version}/query" not in state_b["requests"]


def test_control_endpoints_refuse_an_account_that_is_no_org_id(sandbox: SandboxServer) -> None:
    for account in ("62515", "003Dn0000000001", "00D5g000004ABC!"):
        response = requests.get(f"{sandbox.url}/_sandbox/state", params={"account": account}, timeout=5)
        assert response.status_code == 400 and "not an org id" in response.json()["error"]
    bad = requests.post(f"{sandbox.url}/_sandbox/oauth", json={"next_account": "nope"}, timeout=5)
    assert bad.status_code == 400
    wrong_suffix = requests.post(
        f"{sandbox.url}/_sandbox/oauth", json={"next_account": "00D5g00000ORGAAEAQ"}, timeout=5
    )
    assert wrong_suffix.status_code == 400 and "00D5g00000ORGAAEA5" in wrong_suffix.json()["error"]
    unknown = requests.post(f"{sandbox.url}/_sandbox/oauth", json={"expire": True}, timeout=5)
    assert unknown.status_code == 400 and "unknown settings" in unknown.json()["error"]


def test_reset_all_forgets_orgs_and_tokens_but_resetting_one_org_keeps_its_tokens(
    sandbox: SandboxServer,
) -> None:
    installed = install(sandbox, ORG_A)
    seed_contacts(sandbox, ORG_A, "ann@a.example")
    control(sandbox, "reset", account=ORG_A)
    assert emails(sandbox, installed["access_token"]) == []

    assert query(sandbox, installed["access_token"], "SELECT Id FROM Contact").status_code == 200

    control(sandbox, "reset", {"all": True})
    assert query(sandbox, installed["access_token"], "SELECT Id FROM Contact").json() == INVALID_SESSION
    assert refresh(sandbox, installed["refresh_token"]).json()["error"] == "invalid_grant"
    assert control(sandbox, "oauth")["next_account"] == to_18(DEFAULT_ORG)
