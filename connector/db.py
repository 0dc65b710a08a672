"""Schema management through Alembic (the `release` process and the CLI call this)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, cast

from alembic import command
from alembic.config import Config
from sqlalchemy import CursorResult, Engine, Result
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session


def migrations_dir() -> Path:
    candidates = [Path(__file__).resolve().parents[1] / "migrations", Path.cwd() / "migrations"]
    for candidate in candidates:
        if (candidate / "env.py").exists():
            return candidate
    raise FileNotFoundError(
        "migrations/ not found: run from the project root or install with `pip install -e`"
    )


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    return config


def upgrade_database(engine: Engine) -> None:
    """Apply every migration up to head on `engine`'s database."""
    with engine.begin() as connection:
        config = alembic_config()
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


def dialect_insert(session: Session, table: Any) -> Any:
    """INSERT for the session's database, with its ON CONFLICT clauses (PostgreSQL, or SQLite as fallback)."""
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    return insert(table)


def affected_rows(result: Result[Any]) -> int:
    """The rows an UPDATE or DELETE matched: Session.execute types its result as a Result, for any
    statement, but for these it is the driver cursor's CursorResult, which counts them."""
    return cast("CursorResult[Any]", result).rowcount


def copy_rows(session: Session, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """PostgreSQL COPY into `table`, in the session's transaction: one stream, not a statement per row."""
    driver_connection = session.connection().connection.driver_connection
    assert driver_connection is not None, "the session's connection is open: it was just checked out"
    cursor = driver_connection.cursor()
    with cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)
