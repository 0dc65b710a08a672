"""The whole job chain, driven by an in-process RQ worker against the ApexVerify sandbox over HTTP."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests
from sqlalchemy import select, update

from connector.models import (
    ContactOutcome,
    Sync,
    SyncBatch,
    SyncContact,
    SyncStatus,
    SyncTransition,
    SyncValue,
)
from connector.pipeline.drive import drive_until_settled
from connector.pipeline.runner import schedule_step
from connector.pipeline.syncs import approve_sync, retry_sync
from connector.runtime import Runtime
from connector.sandbox.server import SandboxServer
from connector.verify_command import start_file_sync
from tests.conftest import with_settings

EMAILS = [
    "Alice@Example.com",
    " alice@example.com ",  # same value after normalization
    "info@company.org",  # role
    "someone@mailinator.com",  # disposable
    "bounce.me@example.org",  # undeliverable
    "unknown.person@example.net",  # inconclusive
    "not-an-email",  # malformed: ApexVerify drops it
    "two words@example.com",  # cannot be written as one line: judged locally
    "",  # no email
    "bob@gmail.com",
]


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def sandbox_state(runtime: Runtime) -> dict:
    return requests.get(f"{runtime.settings.apexverify_base_url}/_sandbox/state", timeout=5).json()


def run_file_sync(runtime: Runtime, path: Path, type_: str = "email", **options: object) -> Sync:
    sync = start_file_sync(runtime, path, type_=type_, country="US", **options)
    return drive_until_settled(runtime, sync.id, tick_seconds=0.05)


def verdicts(runtime: Runtime, sync_id: int) -> dict[str, str]:
    with runtime.session() as session:
        rows = session.execute(select(SyncValue.value, SyncValue.status).where(SyncValue.sync_id == sync_id))
        return dict(rows.all())


def outcomes(runtime: Runtime, sync_id: int) -> dict[str, tuple[str, str | None]]:
    with runtime.session() as session:
        rows = session.execute(
            select(SyncContact.record_id, SyncContact.outcome, SyncContact.reason).where(
                SyncContact.sync_id == sync_id
            )
        )
        return {record_id: (outcome, reason) for record_id, outcome, reason in rows}


def test_email_file_sync_runs_every_step_and_keeps_every_contact(runtime: Runtime, tmp_path: Path) -> None:
    sync = run_file_sync(runtime, write_lines(tmp_path / "emails.txt", EMAILS))

    assert sync.status == SyncStatus.COMPLETED, (sync.error_code, sync.error_message)
    assert verdicts(runtime, sync.id) == {
        "alice@example.com": "valid",
        "info@company.org": "valid",
        "someone@mailinator.com": "unknown",
        "bounce.me@example.org": "wrong",
        "unknown.person@example.net": "unknown",
        "not-an-email": "invalid_format",
        "two words@example.com": "invalid_format",
        "bob@gmail.com": "valid",
    }
    contacts = outcomes(runtime, sync.id)
    assert len(contacts) == len(EMAILS)
    assert contacts["line:9"] == (ContactOutcome.SKIPPED, "no_value")
    assert sum(1 for outcome, _ in contacts.values() if outcome == ContactOutcome.VERIFIED) == len(EMAILS) - 1

    with runtime.session() as session:
        history = session.scalars(
            select(SyncTransition.to_status)
            .where(SyncTransition.sync_id == sync.id)
            .order_by(SyncTransition.id)
        ).all()
        role = session.scalar(select(SyncValue).where(SyncValue.value == "info@company.org"))
        assert role is not None and role.is_role and not role.is_disposable
    assert history == [
        "pending",
        "exporting",
        "uploading",
        "configuring",
        "parsing",
        "ready",
        "launching",
        "verifying",
        "fetching_results",
        "writing_back",
        "completed",
    ]
    state = sandbox_state(runtime)
    assert [(b["rows"], b["launch_count"]) for b in state["batches"]] == [(7, 1)]
    assert sync.counts["values_sent"] == 7 and sync.counts["skipped"] == 1
    assert sync.cost["charged"] == state["batches"][0]["charged"]


def test_phone_values_are_sent_in_e164(runtime: Runtime, tmp_path: Path) -> None:
    lines = ["(415) 555-2671", "+1 415 555 2671", "+44 20 7946 0000", "12", ""]
    sync = run_file_sync(runtime, write_lines(tmp_path / "phones.txt", lines), type_="phone")

    assert sync.status == SyncStatus.COMPLETED, sync.error_message
    found = verdicts(runtime, sync.id)
    assert set(found) == {"+14155552671", "+442079460000", "12"}
    assert found["+442079460000"] == "wrong"  # the sandbox's rule: a number ending in 0 is dead
    assert found["12"] == "invalid_format"


def test_large_input_is_split_over_several_batches(runtime: Runtime, tmp_path: Path) -> None:
    runtime = with_settings(runtime, apexverify_max_batch_rows=40)
    lines = [f"user{n}@example.com" for n in range(100)]
    sync = run_file_sync(runtime, write_lines(tmp_path / "many.txt", lines))

    assert sync.status == SyncStatus.COMPLETED
    assert sorted(b["rows"] for b in sandbox_state(runtime)["batches"]) == [20, 40, 40]
    assert set(verdicts(runtime, sync.id).values()) == {"valid"}


def test_recently_verified_values_spend_no_credits(runtime: Runtime, tmp_path: Path) -> None:
    first = run_file_sync(runtime, write_lines(tmp_path / "a.txt", ["a@example.com", "b@example.com"]))
    second = run_file_sync(
        runtime, write_lines(tmp_path / "b.txt", ["a@example.com", "b@example.com", "c@example.com"])
    )

    assert first.status == second.status == SyncStatus.COMPLETED
    assert [b["rows"] for b in sandbox_state(runtime)["batches"]] == [2, 1]
    assert second.counts["values_from_cache"] == 2
    assert verdicts(runtime, second.id) == {
        v: "valid" for v in ("a@example.com", "b@example.com", "c@example.com")
    }


def test_cost_over_budget_waits_for_approval(runtime: Runtime, tmp_path: Path) -> None:
    sync = run_file_sync(
        runtime,
        write_lines(tmp_path / "budget.txt", [f"p{n}@example.com" for n in range(30)]),
        max_net_cost=5,
    )
    assert sync.status == SyncStatus.AWAITING_APPROVAL
    assert sandbox_state(runtime)["launches"] == 0

    approve_sync(runtime, sync.id)
    sync = drive_until_settled(runtime, sync.id, tick_seconds=0.05)
    assert sync.status == SyncStatus.COMPLETED
    assert sandbox_state(runtime)["launches"] == 1


def test_insufficient_credits_fails_then_retry_completes_charging_once(
    runtime: Runtime, tmp_path: Path
) -> None:
    base = runtime.settings.apexverify_base_url
    requests.post(f"{base}/_sandbox/config", json={"credits": 1}, timeout=5).raise_for_status()
    path = write_lines(tmp_path / "credits.txt", [f"c{n}@example.com" for n in range(10)])

    sync = run_file_sync(runtime, path)
    assert (sync.status, sync.failed_step, sync.error_code) == ("failed", "launching", "insufficient_credits")
    assert sandbox_state(runtime)["charges"] == 0

    requests.post(f"{base}/_sandbox/config", json={"add_credits": 1000}, timeout=5).raise_for_status()
    retry_sync(runtime, sync.id)
    sync = drive_until_settled(runtime, sync.id, tick_seconds=0.05)

    assert sync.status == SyncStatus.COMPLETED
    state = sandbox_state(runtime)
    assert len(state["batches"]) == 1 and state["launches"] == 1 and state["charges"] == 1


def test_a_burst_of_429s_is_absorbed(runtime: Runtime, tmp_path: Path) -> None:
    base = runtime.settings.apexverify_base_url
    requests.post(
        f"{base}/_sandbox/faults", json={"endpoint": "any", "kind": "http_429", "count": 4}, timeout=5
    )

    sync = run_file_sync(runtime, write_lines(tmp_path / "burst.txt", ["x@example.com", "y@example.com"]))

    assert sync.status == SyncStatus.COMPLETED
    assert sandbox_state(runtime)["rate_limited"] >= 4


def test_internal_error_while_parsing_is_retried_by_parsing_again(runtime: Runtime, tmp_path: Path) -> None:
    base = runtime.settings.apexverify_base_url
    fault = {"endpoint": "details", "kind": "internal_error", "count": 1}
    requests.post(f"{base}/_sandbox/faults", json=fault, timeout=5).raise_for_status()

    sync = run_file_sync(runtime, write_lines(tmp_path / "pe.txt", ["p@example.com"]))
    assert (sync.status, sync.failed_step, sync.error_code) == (
        "failed",
        "parsing",
        "apexverify_internal_error",
    )

    retry_sync(runtime, sync.id)
    sync = drive_until_settled(runtime, sync.id, tick_seconds=0.05)
    assert sync.status == SyncStatus.COMPLETED
    state = sandbox_state(runtime)
    assert [(b["parse_count"], b["launch_count"]) for b in state["batches"]] == [(2, 1)]


def test_internal_error_after_launch_fails_clearly_and_retry_moves_the_values_to_a_new_batch(
    runtime: Runtime, tmp_path: Path
) -> None:
    base = runtime.settings.apexverify_base_url
    fault = {"endpoint": "status", "kind": "internal_error", "count": 1}
    requests.post(f"{base}/_sandbox/faults", json=fault, timeout=5).raise_for_status()

    sync = run_file_sync(runtime, write_lines(tmp_path / "ie.txt", ["q@example.com", "r@example.com"]))
    assert (sync.status, sync.failed_step, sync.error_code) == (
        "failed",
        "verifying",
        "apexverify_internal_error",
    )

    retry_sync(runtime, sync.id)
    sync = drive_until_settled(runtime, sync.id, tick_seconds=0.05)

    assert sync.status == SyncStatus.COMPLETED, (sync.error_code, sync.error_message)
    assert verdicts(runtime, sync.id) == {"q@example.com": "valid", "r@example.com": "valid"}
    with runtime.session() as session:
        batches = session.scalars(
            select(SyncBatch).where(SyncBatch.sync_id == sync.id).order_by(SyncBatch.seq)
        ).all()
        assert [(b.seq, b.abandoned_at is not None) for b in batches] == [(0, True), (1, False)]
    state = sandbox_state(runtime)
    assert [b["launch_count"] for b in state["batches"]] == [1, 1]  # the broken batch is never relaunched
    assert sync.cost["charged"] == sum(b["charged"] for b in state["batches"])


def test_a_broken_batch_repaired_by_apexverify_support_is_polled_again(
    runtime: Runtime, tmp_path: Path
) -> None:
    """Until the operator retries, nothing is re-spent: a batch fixed in the meantime just completes."""
    base = runtime.settings.apexverify_base_url
    fault = {"endpoint": "status", "kind": "internal_error", "count": 1}
    requests.post(f"{base}/_sandbox/faults", json=fault, timeout=5).raise_for_status()
    sync = run_file_sync(runtime, write_lines(tmp_path / "fix.txt", ["s@example.com"]))
    assert sync.error_code == "apexverify_internal_error"
    batch_uuid = sandbox_state(runtime)["batches"][0]["batch_uuid"]
    requests.post(f"{base}/_sandbox/batches/{batch_uuid}/repair", timeout=5).raise_for_status()

    with runtime.session() as session:
        session.execute(update(Sync).where(Sync.id == sync.id).values(status="verifying", failed_step=None))
    schedule_step(runtime, sync.id)
    sync = drive_until_settled(runtime, sync.id, tick_seconds=0.05)

    assert sync.status == SyncStatus.COMPLETED
    assert len(sandbox_state(runtime)["batches"]) == 1


def test_retry_of_a_sync_that_did_not_fail_is_refused(runtime: Runtime, tmp_path: Path) -> None:
    from connector.pipeline.syncs import SyncStateError

    sync = run_file_sync(runtime, write_lines(tmp_path / "ok.txt", ["ok@example.com"]))
    with pytest.raises(SyncStateError):
        retry_sync(runtime, sync.id)


def test_an_unexpected_error_after_a_step_fails_the_sync_instead_of_leaving_it_stuck(
    runtime: Runtime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import connector.pipeline.runner as runner

    def broken_counts(session: object, sync: object) -> None:
        raise RuntimeError("counting broke")

    monkeypatch.setattr(runner, "refresh_counts", broken_counts)
    sync = start_file_sync(
        runtime, write_lines(tmp_path / "x.txt", ["x@example.com"]), type_="email", country="US"
    )
    with pytest.raises(RuntimeError):
        runner.run_sync_step(sync.id, sync_job_id(runtime, sync.id))

    with runtime.session() as session:
        stuck = session.get_one(Sync, sync.id)
        assert (stuck.status, stuck.failed_step, stuck.error_code) == (
            "failed",
            "pending",
            "unexpected_error",
        )
        assert "counting broke" in (stuck.error_message or "")


def test_an_export_step_replaced_while_it_reads_the_segment_adds_no_contact(
    runtime: Runtime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A step that overran its lease (a CRM outage retried for longer than it) is replaced by the
    reconciler; the new job clears the export and reads it again, so the old one must add nothing."""
    from connector.pipeline import steps
    from connector.pipeline.state import StepAborted, StepContext

    path = write_lines(tmp_path / "s.txt", [f"p{n}@example.com" for n in range(10)])
    sync = start_file_sync(runtime, path, type_="email", country="US")
    with runtime.session() as session:
        session.execute(
            update(Sync).where(Sync.id == sync.id).values(status=SyncStatus.EXPORTING, job_id="old-job")
        )
    real_source_for = steps.source_for

    class ReplacedWhileReading:
        def __init__(self, *args: object, **kwargs: object) -> None:
            self.source = real_source_for(*args, **kwargs)  # type: ignore[arg-type]

        def iter_records(self):  # type: ignore[no-untyped-def]
            with runtime.session() as session:  # what the reconciler does once the lease has run out
                session.execute(update(Sync).where(Sync.id == sync.id).values(job_id="new-job"))
            yield from self.source.iter_records()

    monkeypatch.setattr(steps, "source_for", ReplacedWhileReading)
    with pytest.raises(StepAborted):
        steps.export_segment(StepContext(runtime, sync.id, "old-job"))

    with runtime.session() as session:
        assert session.scalars(select(SyncContact.id).where(SyncContact.sync_id == sync.id)).all() == []


def sync_job_id(runtime: Runtime, sync_id: int) -> str:
    with runtime.session() as session:
        job_id = session.get_one(Sync, sync_id).job_id
    assert job_id is not None
    return job_id


def test_an_upload_step_replaced_while_uploading_leaves_the_new_owners_batch_alone(
    runtime: Runtime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The replaced job's upload must not overwrite the uuid the new job uploaded (and may launch)."""
    from connector.pipeline import steps
    from connector.pipeline.state import StepAborted, StepContext

    path = write_lines(tmp_path / "u.txt", [f"u{n}@example.com" for n in range(10)])
    sync = start_file_sync(runtime, path, type_="email", country="US")
    with runtime.session() as session:
        session.execute(
            update(Sync).where(Sync.id == sync.id).values(status=SyncStatus.EXPORTING, job_id="old-job")
        )
    steps.export_segment(StepContext(runtime, sync.id, "old-job"))
    real_client = steps._client

    def replaced_during_upload(ctx: StepContext):  # type: ignore[no-untyped-def]
        client = real_client(ctx)
        real_upload = client.upload

        def upload(*args: object, **kwargs: object) -> str:
            uploaded = real_upload(*args, **kwargs)  # type: ignore[arg-type]
            with runtime.session() as session:  # meanwhile the lease ran out and a new job uploaded
                session.execute(update(Sync).where(Sync.id == sync.id).values(job_id="new-job"))
                session.execute(
                    update(SyncBatch)
                    .where(SyncBatch.sync_id == sync.id)
                    .values(batch_uuid="new-owners-batch")
                )
            return uploaded

        client.upload = upload  # type: ignore[method-assign]
        return client

    monkeypatch.setattr(steps, "_client", replaced_during_upload)
    with pytest.raises(StepAborted):
        steps.upload_batches(StepContext(runtime, sync.id, "old-job"))

    with runtime.session() as session:
        assert session.scalars(select(SyncBatch.batch_uuid).where(SyncBatch.sync_id == sync.id)).all() == [
            "new-owners-batch"
        ]
    [orphan] = sandbox_state(runtime)["batches"]
    assert orphan["launch_count"] == 0 and not orphan["charged"]  # uploaded only: no credits spent


def test_a_write_back_step_replaced_while_writing_records_nothing(
    runtime: Runtime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its successor writes the page again; the old job must not also record and count it."""
    from connector.pipeline import steps, write_back
    from connector.pipeline.state import StepAborted, StepContext

    sync = run_file_sync(runtime, write_lines(tmp_path / "w.txt", [f"w{n}@example.com" for n in range(10)]))
    with runtime.session() as session:
        session.execute(
            update(SyncContact).where(SyncContact.sync_id == sync.id).values(outcome=ContactOutcome.PENDING)
        )
        session.execute(
            update(Sync).where(Sync.id == sync.id).values(status=SyncStatus.WRITING_BACK, job_id="old-job")
        )
    real_writer_for = write_back.writer_for

    class ReplacedWhileWriting:
        batch_size = 5000

        def __init__(self, *args: object, **kwargs: object) -> None:
            self.writer = real_writer_for(*args, **kwargs)  # type: ignore[arg-type]

        def prepare(self) -> None:
            self.writer.prepare()

        def write(self, updates):  # type: ignore[no-untyped-def]
            failures = self.writer.write(updates)
            with runtime.session() as session:  # meanwhile the lease ran out and a new job took over
                session.execute(update(Sync).where(Sync.id == sync.id).values(job_id="new-job"))
            return failures

    monkeypatch.setattr(write_back, "writer_for", ReplacedWhileWriting)
    with pytest.raises(StepAborted):
        steps.write_back_flags(StepContext(runtime, sync.id, "old-job"))

    assert set(outcomes(runtime, sync.id).values()) == {("pending", None)}


def test_a_cancel_between_two_launches_stops_the_second_one(
    runtime: Runtime, apexverify_sandbox: SandboxServer, tmp_path: Path
) -> None:
    """Cancel means stop spending: the cancel lands while the first of two batches is being launched
    (the sandbox answers that launch only once the cancel is committed), so the second never is."""
    from flask import Response, request

    from connector.pipeline.syncs import cancel_sync

    runtime = with_settings(runtime, apexverify_max_batch_rows=2)
    path = write_lines(tmp_path / "two.txt", ["a@example.com", "b@example.com", "c@example.com"])
    sync = start_file_sync(runtime, path, type_="email", country="US")

    @apexverify_sandbox.app.after_request
    def cancel_after_the_first_launch(response: Response) -> Response:
        if request.endpoint == "launch" and sandbox_launches(apexverify_sandbox) == 1:
            cancel_sync(runtime, sync.id)
        return response

    settled = drive_until_settled(runtime, sync.id, tick_seconds=0.05)

    assert settled.status == SyncStatus.CANCELLED
    state = sandbox_state(runtime)
    assert sorted((b["rows"], b["launch_count"]) for b in state["batches"]) == [(1, 0), (2, 1)]
    assert state["launches"] == 1
    assert settled.cost["charged"] == sum(b["charged"] for b in state["batches"]) > 0


def sandbox_launches(server: SandboxServer) -> int:
    return int(server.app.extensions["apexverify_state"].launches)
