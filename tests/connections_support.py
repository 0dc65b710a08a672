"""OAuth installs for tests: both CRM sandboxes with an OAuth app, and the install flow as the ops
page drives it (consent URL followed to the sandbox, which redirects straight back, then the
callback's query handed to `finish_install`). tests/conftest.py loads it as a plugin, so every
test can ask for its fixtures by name.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
import requests
from cryptography.fernet import Fernet
from sqlalchemy import func, select

from connector.models import Connection
from connector.pipeline.connections import Installed, begin_install, finish_install
from connector.runtime import Runtime
from connector.sandbox.server import SandboxServer, serve_in_thread
from connector.secretbox import SecretBox
from tests.conftest import (
    HUBSPOT_TOKEN,
    SALESFORCE_ORG_ID,
    SALESFORCE_SESSION,
    SALESFORCE_WEBHOOK_TOKEN,
    with_settings,
)

KEY = Fernet.generate_key().decode()
HS_CLIENT_ID = "hs-client-id-e2e"
HS_CLIENT_SECRET = "hs-client-secret-e2e"
SF_CLIENT_ID = "sf-client-id-e2e"
SF_CLIENT_SECRET = "sf-client-secret-e2e"
ENV_PORTAL = "777"
PORTAL_B = "8801"
ORG_B = "00D5g000008QRSTEA4"  # 18 characters: 15 and a case-safe suffix
REDIRECT = {
    "hubspot": "http://connector.test/admin/connect/hubspot/callback",
    "salesforce": "http://connector.test/admin/connect/salesforce/callback",
}


# ---- fixtures -----------------------------------------------------------------------------------


@pytest.fixture
def hubspot_app(hubspot_specs_dir: Path) -> Iterator[SandboxServer]:
    from connector.sandbox.hubspot import create_app

    server = serve_in_thread(
        create_app(
            access_token=HUBSPOT_TOKEN,
            portal_id=int(ENV_PORTAL),
            client_id=HS_CLIENT_ID,
            client_secret=HS_CLIENT_SECRET,
            export_delay=0.2,
            import_delay=0.2,
            specs_dir=hubspot_specs_dir,
        )
    )
    yield server
    server.stop()


@pytest.fixture
def salesforce_app() -> Iterator[SandboxServer]:
    from connector.sandbox.salesforce import create_app

    server = serve_in_thread(
        create_app(
            access_token=SALESFORCE_SESSION,
            org_id=SALESFORCE_ORG_ID,
            client_id=SF_CLIENT_ID,
            client_secret=SF_CLIENT_SECRET,
            bulk_delay=0.2,
        )
    )
    yield server
    server.stop()


@pytest.fixture
def installs(runtime: Runtime, hubspot_app: SandboxServer, salesforce_app: SandboxServer) -> Runtime:
    """Both CRMs installable by OAuth; the env connections configured as before (HubSpot portal 777,
    the Salesforce org of SALESFORCE_ORG_ID)."""
    return with_settings(
        runtime,
        secret_key=KEY,
        hubspot_base_url=hubspot_app.url,
        hubspot_auth_url=hubspot_app.url,
        hubspot_client_id=HS_CLIENT_ID,
        hubspot_client_secret=HS_CLIENT_SECRET,
        hubspot_access_token=HUBSPOT_TOKEN,
        hubspot_portal_id=ENV_PORTAL,
        salesforce_login_url=salesforce_app.url,
        salesforce_instance_url=salesforce_app.url,
        salesforce_client_id=SF_CLIENT_ID,
        salesforce_client_secret=SF_CLIENT_SECRET,
        salesforce_access_token=SALESFORCE_SESSION,
        salesforce_org_id=SALESFORCE_ORG_ID[:15],
        salesforce_webhook_token=SALESFORCE_WEBHOOK_TOKEN,
    )


@pytest.fixture
def installs_without_env(installs: Runtime) -> Runtime:
    """`installs` with no env connection (no HubSpot token or portal, no Salesforce session, org or
    Flow token): a CRM is reached only with the tokens of an OAuth install."""
    return with_settings(
        installs, hubspot_access_token=None, hubspot_portal_id=None, salesforce_instance_url=None,
        salesforce_access_token=None, salesforce_org_id=None, salesforce_webhook_token=None,
    )  # fmt: skip


def consent(url: str) -> dict[str, str]:
    """Follow the consent URL to the sandbox; the callback's query it redirects back with."""
    answer = requests.get(url, allow_redirects=False, timeout=5)
    assert answer.status_code == 302, answer.text
    return dict(parse_qsl(urlsplit(answer.headers["Location"]).query))


def install(
    runtime: Runtime, sandbox: SandboxServer, crm: str, account: str | None = None, binding: str = "session-a"
) -> Installed:
    if account is not None:
        requests.post(
            f"{sandbox.url}/_sandbox/oauth", json={"next_account": account}, timeout=5
        ).raise_for_status()
    args = consent(begin_install(runtime, crm, binding, REDIRECT[crm]))
    return finish_install(runtime, crm, binding, args)


def oauth_counts(sandbox: SandboxServer, account: str) -> dict[str, int]:
    return requests.get(f"{sandbox.url}/_sandbox/oauth", params={"account": account}, timeout=5).json()


def connection_count(runtime: Runtime) -> int:
    with runtime.session() as session:
        return int(session.scalar(select(func.count()).select_from(Connection)) or 0)


def stored(runtime: Runtime, connection_id: int) -> Connection:
    with runtime.session() as session:
        row = session.get(Connection, connection_id)
        assert row is not None
        session.expunge(row)
        return row


def tokens_of(row: Connection) -> dict[str, Any]:
    assert row.credentials is not None
    return SecretBox([KEY]).open(row.credentials)
