"""Test fixtures: real PostgreSQL and Redis when they answer (always in CI), else SQLite and fakeredis.

Each test run gets its own PostgreSQL database, migrated with Alembic, and its own Redis
database number; tables and Redis are emptied between tests.
"""

from __future__ import annotations

import dataclasses
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa

from connector.config import Settings
from connector.db import upgrade_database
from connector.models import Base
from connector.runtime import Runtime, make_engine, set_runtime
from connector.sandbox.server import SandboxServer, serve_in_thread

PG_ADMIN_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_TEST_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/2")
API_KEY = "test-apexverify-key-0001"
IN_CI = os.environ.get("CI") == "true"
# OAuth installs against both CRM sandboxes (fixtures hubspot_app, salesforce_app, installs), and
# headless Chromium (fixture browser).
pytest_plugins = ["tests.connections_support", "tests.browser"]


def _postgres_available() -> bool:
    try:
        engine = make_engine(PG_ADMIN_URL)
        with engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))
        engine.dispose()
        return True
    except Exception:
        if IN_CI:
            raise
        return False


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if not _postgres_available():
        yield f"sqlite:///{tmp_path_factory.mktemp('db') / 'connector.db'}"
        return
    name = f"connector_test_{uuid.uuid4().hex[:8]}"
    admin = make_engine(PG_ADMIN_URL).execution_options(isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    yield url
    with admin.connect() as connection:
        connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def migrated_engine(database_url: str) -> Iterator[sa.Engine]:
    engine = make_engine(database_url)
    upgrade_database(engine)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def redis_connection() -> redis.Redis:
    connection = redis.Redis.from_url(REDIS_TEST_URL)
    try:
        connection.ping()
        return connection
    except redis.exceptions.ConnectionError:
        if IN_CI:
            raise
    import fakeredis

    return fakeredis.FakeRedis()


@pytest.fixture
def clean_state(migrated_engine: sa.Engine, redis_connection: redis.Redis) -> None:
    with migrated_engine.begin() as connection:
        for table in reversed(Base.metadata.sorted_tables):
            connection.execute(table.delete())
    redis_connection.flushdb()


@pytest.fixture
def apexverify_sandbox() -> Iterator[SandboxServer]:
    from connector.sandbox.apexverify import ApexVerifySandboxOptions, create_app

    server = serve_in_thread(
        create_app(ApexVerifySandboxOptions(api_key=API_KEY, parse_delay=0.2, verify_delay=0.5))
    )
    yield server
    server.stop()


@pytest.fixture
def settings(tmp_path: Path, database_url: str, apexverify_sandbox: SandboxServer) -> Settings:
    return Settings(
        database_url=database_url,
        redis_url=REDIS_TEST_URL,
        data_dir=tmp_path / "var",
        admin_token="test-admin-token",
        apexverify_base_url=apexverify_sandbox.url,
        apexverify_api_key=API_KEY,
        poll_initial_seconds=0.2,
        poll_max_seconds=1.0,
        step_lease_seconds=30,
        queue_name=f"connector-test-{uuid.uuid4().hex[:6]}",
    )


@pytest.fixture
def runtime(
    settings: Settings, migrated_engine: sa.Engine, redis_connection: redis.Redis, clean_state: None
) -> Iterator[Runtime]:
    from sqlalchemy.orm import sessionmaker

    runtime = Runtime(
        settings=settings,
        engine=migrated_engine,
        sessions=sessionmaker(migrated_engine, expire_on_commit=False),
        redis=redis_connection,
    )
    set_runtime(runtime)
    yield runtime
    set_runtime(None)


def with_settings(runtime: Runtime, **changes: object) -> Runtime:
    """The same runtime with some settings changed (and made current)."""
    changed = dataclasses.replace(runtime, settings=settings_with(runtime.settings, **changes))
    set_runtime(changed)
    return changed


def settings_with(settings: Settings, **changes: object) -> Settings:
    """`settings` with some changed. A name that is no field of Settings is a variable of a CRM's
    section, written in lower case (hubspot_portal_id=... sets HUBSPOT_PORTAL_ID; None unsets it)."""
    own = {f.name for f in dataclasses.fields(Settings)}
    env = dict(settings.env)
    for name, value in changes.items():
        if name in own:
            continue
        env.pop(name.upper(), None)
        if value is not None:
            env[name.upper()] = str(value)
    return dataclasses.replace(settings, env=env, **{k: v for k, v in changes.items() if k in own})


@pytest.fixture
def web(runtime: Runtime) -> Iterator[SandboxServer]:
    """The connector's own Flask app on a real port, sharing the current test runtime.

    Request fixtures that change settings (with_settings) before this one, so the app sees them.
    """
    from connector.runtime import get_runtime
    from connector.web import create_app

    server = serve_in_thread(create_app(runtime=get_runtime()))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def hubspot_specs_dir() -> Path:
    """HubSpot's OpenAPI specs, beside the repository (../shared/specs/hubspot): pass it to the HubSpot
    sandbox (`create_app(specs_dir=...)`) so it checks every request against them."""
    return Path(__file__).resolve().parents[2] / "shared" / "specs" / "hubspot"


# ---- CRM sandboxes, for the tests that run a CRM end to end ---------------------------------------

HUBSPOT_TOKEN = "pat-test-hubspot-token"
HUBSPOT_SECRET = "hubspot-app-secret-e2e"
HUBSPOT_PORTAL = "777"
SALESFORCE_SESSION = "00Dsandbox!session-token"
SALESFORCE_ORG_ID = "00D5g000004ABCDEAV"  # the 18-character form; the first 15 characters are the other
SALESFORCE_WEBHOOK_TOKEN = "flow-callout-token-e2e"


@pytest.fixture
def hubspot_sandbox(hubspot_specs_dir: Path) -> Iterator[SandboxServer]:
    """A HubSpot portal of the test's own (HUBSPOT_TOKEN), checking every request against HubSpot's
    specs; its exports and imports finish 0.2 s after they start."""
    from connector.sandbox.hubspot import create_app

    server = serve_in_thread(
        create_app(
            access_token=HUBSPOT_TOKEN, export_delay=0.2, import_delay=0.2, specs_dir=hubspot_specs_dir
        )
    )
    yield server
    server.stop()


@pytest.fixture
def hubspot_runtime(runtime: Runtime, hubspot_sandbox: SandboxServer) -> Runtime:
    """The test runtime connected to `hubspot_sandbox`, with the app's webhook secret and portal."""
    return with_settings(
        runtime, hubspot_base_url=hubspot_sandbox.url, hubspot_access_token=HUBSPOT_TOKEN,
        hubspot_client_secret=HUBSPOT_SECRET, hubspot_portal_id=HUBSPOT_PORTAL,
    )  # fmt: skip


@pytest.fixture
def salesforce_sandbox() -> Iterator[SandboxServer]:
    """A Salesforce org of the test's own (SALESFORCE_ORG_ID, session SALESFORCE_SESSION); its Bulk API
    2.0 jobs finish 0.2 s after they start."""
    from connector.sandbox.salesforce import create_app

    app = create_app(access_token=SALESFORCE_SESSION, bulk_delay=0.2, org_id=SALESFORCE_ORG_ID)
    server = serve_in_thread(app)
    yield server
    server.stop()


@pytest.fixture
def sf_runtime(runtime: Runtime, salesforce_sandbox: SandboxServer) -> Runtime:
    """The test runtime connected to `salesforce_sandbox`, taking its webhooks (org and Flow token);
    coalesced contacts become a sync at the next flush."""
    return with_settings(
        runtime, salesforce_instance_url=salesforce_sandbox.url, salesforce_access_token=SALESFORCE_SESSION,
        salesforce_org_id=SALESFORCE_ORG_ID[:15], salesforce_webhook_token=SALESFORCE_WEBHOOK_TOKEN,
        coalesce_window_seconds=0,
    )  # fmt: skip
