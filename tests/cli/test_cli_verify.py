"""`connector verify` as a user runs it: arguments in, verdict file and exit code out."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
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
