"""Regenerate docs/ops-page.png: the ops page's sync view of a sync that failed and was retried.

    .venv/bin/python docs/take_screenshot.py

Everything runs in this process on a throwaway SQLite database and an in-memory Redis, against
the local ApexVerify sandbox; Chromium is Debian's (/usr/bin/chromium).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import fakeredis
import requests
from playwright.sync_api import sync_playwright
from sqlalchemy.orm import sessionmaker

from connector.config import Settings
from connector.db import upgrade_database
from connector.demo import generate_emails
from connector.pipeline.drive import drive_until_settled
from connector.pipeline.syncs import retry_sync
from connector.runtime import Runtime, make_engine, set_runtime
from connector.sandbox.apexverify import ApexVerifySandboxOptions
from connector.sandbox.apexverify import create_app as create_sandbox
from connector.sandbox.server import serve_in_thread
from connector.verify_command import start_file_sync
from connector.web import create_app

OUTPUT = Path(__file__).with_name("ops-page.png")
API_KEY = "screenshot-key"
ADMIN_TOKEN = "screenshot-admin-token"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync"]


def build_runtime(workdir: Path, apexverify_url: str) -> Runtime:
    settings = Settings(
        database_url=f"sqlite:///{workdir / 'ops.db'}",
        data_dir=workdir / "var",
        admin_token=ADMIN_TOKEN,
        apexverify_base_url=apexverify_url,
        apexverify_api_key=API_KEY,
        poll_initial_seconds=0.2,
        poll_max_seconds=1.0,
        log_level="ERROR",
    )
    engine = make_engine(settings.database_url)
    upgrade_database(engine)
    runtime = Runtime(settings, engine, sessionmaker(engine, expire_on_commit=False), fakeredis.FakeRedis())
    set_runtime(runtime)
    return runtime


def failed_then_retried_sync(runtime: Runtime, workdir: Path) -> int:
    """A newsletter file that fails to launch for want of credits, then completes after a retry."""
    sandbox = runtime.settings.apexverify_base_url
    source = workdir / "newsletter-signups.txt"
    source.write_text("\n".join(generate_emails(600)) + "\n", encoding="utf-8")
    requests.post(f"{sandbox}/_sandbox/config", json={"credits": 10}, timeout=5).raise_for_status()
    sync = start_file_sync(runtime, source, type_="email", country="US", max_net_cost=5000)
    drive_until_settled(runtime, sync.id)
    requests.post(f"{sandbox}/_sandbox/config", json={"add_credits": 10_000}, timeout=5).raise_for_status()
    retry_sync(runtime, sync.id)
    drive_until_settled(runtime, sync.id)
    return sync.id


def screenshot(web_url: str, sync_id: int) -> None:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.goto(f"{web_url}/admin/")
        page.fill("#token", ADMIN_TOKEN)
        page.get_by_role("button", name="Sign in").click()
        page.goto(f"{web_url}/admin/ops/syncs/{sync_id}")
        page.screenshot(path=str(OUTPUT))
        browser.close()


def main() -> None:
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no access log lines
    sandbox = serve_in_thread(
        create_sandbox(ApexVerifySandboxOptions(api_key=API_KEY, parse_delay=0.2, verify_delay=0.5))
    )
    with tempfile.TemporaryDirectory() as tmp:
        runtime = build_runtime(Path(tmp), sandbox.url)
        sync_id = failed_then_retried_sync(runtime, Path(tmp))
        web = serve_in_thread(create_app(runtime=runtime))
        try:
            screenshot(web.url, sync_id)
        finally:
            web.stop()
            sandbox.stop()
            runtime.engine.dispose()
    print(f"wrote {OUTPUT}")


if __name__ == "__main__":
    main()
