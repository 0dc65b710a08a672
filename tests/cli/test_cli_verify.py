"""`connector verify` as a user runs it: arguments in, verdict file and exit code out."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner

from connector.cli import main
from connector.runtime import Runtime


@pytest.fixture
def cli_env(runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    settings = runtime.settings
    for name, value in {
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "CONNECTOR_QUEUE": settings.queue_name,
        "CONNECTOR_DATA_DIR": str(settings.data_dir),
        "APEXVERIFY_BASE_URL": settings.apexverify_base_url,
        "APEXVERIFY_API_KEY": settings.apexverify_api_key or "",
        "CONNECTOR_POLL_INITIAL_SECONDS": "0.2",
        "CONNECTOR_POLL_MAX_SECONDS": "1",
    }.items():
        monkeypatch.setenv(name, value)
    return CliRunner()


def test_verify_writes_one_csv_row_per_distinct_value(cli_env: CliRunner, tmp_path: Path) -> None:
    source = tmp_path / "in.txt"
    source.write_text("A@Example.com\na@example.com\ninfo@shop.io\n=cmd@evil.com\n\n", encoding="utf-8")
    output = tmp_path / "out.csv"

    result = cli_env.invoke(
        main, ["verify", str(source), "--type", "email", "--country", "us", "-o", str(output)]
    )

    assert result.exit_code == 0, result.output
    rows = {r["value"]: r for r in csv.DictReader(output.open(encoding="utf-8"))}
    assert set(rows) == {"a@example.com", "info@shop.io", "'=cmd@evil.com"}  # formula neutralised
    assert rows["info@shop.io"]["is_role"] == "True" and rows["info@shop.io"]["status"] == "valid"
    assert "completed" in result.output


def test_verify_writes_json_keyed_by_value(cli_env: CliRunner, tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    source.write_text("id,phone\n7,+14155552671\n8,+14155552670\n", encoding="utf-8")
    output = tmp_path / "out.json"

    result = cli_env.invoke(
        main, ["verify", str(source), "--type", "phone", "--country", "US", "-o", str(output)]
    )

    assert result.exit_code == 0, result.output
    verdicts = json.loads(output.read_text(encoding="utf-8"))
    assert verdicts["+14155552671"]["status"] == "valid"
    assert verdicts["+14155552670"]["status"] == "wrong"


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--country", "XX"], "target_country must be an ISO 3166 alpha-2 code"),
        (
            ["--country", "US", "--param", "target_audience=99"],
            "target_audience must be an integer from 1 to 23",
        ),
        (["--country", "US", "--param", "nonsense=1"], "unknown ApexVerify parameter 'nonsense'"),
    ],
)
def test_bad_input_is_a_clear_error_with_exit_code_2(
    cli_env: CliRunner, tmp_path: Path, arguments: list[str], message: str
) -> None:
    source = tmp_path / "in.txt"
    source.write_text("a@example.com\n", encoding="utf-8")

    result = cli_env.invoke(main, ["verify", str(source), "--type", "email", *arguments])

    assert result.exit_code == 2
    assert message in result.output


def test_missing_file_is_refused(cli_env: CliRunner, tmp_path: Path) -> None:
    result = cli_env.invoke(
        main, ["verify", str(tmp_path / "nope.txt"), "--type", "email", "--country", "US"]
    )
    assert result.exit_code == 2
    assert "does not exist" in result.output


def test_over_budget_exits_3_and_waits_for_approval(cli_env: CliRunner, tmp_path: Path) -> None:
    source = tmp_path / "in.txt"
    source.write_text("".join(f"u{n}@example.com\n" for n in range(20)), encoding="utf-8")

    result = cli_env.invoke(
        main, ["verify", str(source), "--type", "email", "--country", "US", "--max-net-cost", "3"]
    )

    assert result.exit_code == 3
    assert "awaiting_approval" in result.output
    assert re.search(r"\nvalues to send +20\n", result.output)  # the plan, kept over budget too
    assert re.search(r"approve with: connector verify --resume \d+ --approve\n", result.output)


def test_a_plan_stops_before_the_launch_and_approve_runs_it_to_the_end(
    cli_env: CliRunner, runtime: Runtime, tmp_path: Path
) -> None:
    source = tmp_path / "in.txt"
    source.write_text("".join(f"p{n}@example.com\n" for n in range(6)) + "P0@example.com\n", encoding="utf-8")
    output = tmp_path / "out.csv"
    base = runtime.settings.apexverify_base_url

    planned = cli_env.invoke(
        main, ["verify", str(source), "--type", "email", "--country", "US", "--plan", "-o", str(output)]
    )

    assert planned.exit_code == 0, planned.output
    sync_id = int(re.search(r"plan of sync (\d+)", planned.output).group(1))  # type: ignore[union-attr]
    for line in (
        "contacts  +7",
        "distinct values  +6",
        "skipped as recently verified  +0",
        "values to send  +6",
    ):
        assert re.search(f"\n{line}\n", planned.output), planned.output
    estimate = float(re.search(r"\nestimated cost  +([\d.]+) credits\n", planned.output).group(1))  # type: ignore[union-attr]
    assert f"approve with: connector verify --resume {sync_id} --approve -o {output}" in planned.output
    state = requests.get(f"{base}/_sandbox/state", timeout=5).json()
    assert (len(state["batches"]), state["launches"]) == (1, 0) and not output.exists()

    approved = cli_env.invoke(main, ["verify", "--resume", str(sync_id), "--approve", "-o", str(output)])

    assert approved.exit_code == 0, approved.output
    assert f"sync {sync_id}: completed" in approved.output
    assert len(list(csv.DictReader(output.open(encoding="utf-8")))) == 6
    state = requests.get(f"{base}/_sandbox/state", timeout=5).json()
    assert (len(state["batches"]), state["launches"]) == (1, 1)  # the planned batch, not a second upload
    assert state["batches"][0]["charged"] == estimate > 0


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--approve"], "--approve launches a sync awaiting approval: name it with --resume SYNC_ID"),
        (["--resume", "1", "--plan"], "--plan starts a new sync of FILE"),
    ],
)
def test_plan_and_approve_options_are_checked(
    cli_env: CliRunner, tmp_path: Path, arguments: list[str], message: str
) -> None:
    source = tmp_path / "in.txt"
    source.write_text("a@example.com\n", encoding="utf-8")
    result = cli_env.invoke(main, ["verify", str(source), "--type", "email", "--country", "US", *arguments])
    assert result.exit_code == 2 and message in result.output


def test_approve_refuses_a_sync_that_is_not_awaiting_approval(cli_env: CliRunner, tmp_path: Path) -> None:
    source = tmp_path / "in.txt"
    source.write_text("a@example.com\n", encoding="utf-8")
    done = cli_env.invoke(main, ["verify", str(source), "--type", "email", "--country", "US"])
    sync_id = int(re.search(r"sync (\d+): completed", done.output).group(1))  # type: ignore[union-attr]

    result = cli_env.invoke(main, ["verify", "--resume", str(sync_id), "--approve"])

    assert result.exit_code == 2
    assert f"sync {sync_id} is completed, not awaiting approval (not_awaiting_approval)" in result.output
