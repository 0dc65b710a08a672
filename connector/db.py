"""Schema management through Alembic (the `release` process and the CLI call this)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, cast

from alembic import command
from alembic.config import Config
from sqlalchemy import CursorResult, Engine, Result, Select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
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


def uses_postgresql(session: Session) -> bool:
    """PostgreSQL (production, CI), not SQLite (the demo's default): COPY and the like are there."""
    return session.get_bind().dialect.name == "postgresql"


def dialect_insert(session: Session, table: Any) -> Any:
    """INSERT for the session's database, with its ON CONFLICT clauses (PostgreSQL, or SQLite as fallback)."""
    insert = postgresql.insert if uses_postgresql(session) else sqlite.insert
    return insert(table)


def inserted_without_upsert(session: Session, plain: Callable[[], object]) -> bool:
    """Run `plain` (an UPDATE of the known rows and an INSERT of the new ones) in a savepoint, on
    PostgreSQL; True when it did the work. An upsert inserts every row speculatively: 4.5 s against
    2.0 s for 1,000,000 new rows. False on SQLite, or when another transaction inserted one of the
    keys meanwhile (the savepoint is rolled back): the caller upserts instead."""
    if not uses_postgresql(session):
        return False
    try:
        with session.begin_nested():
            plain()
        return True
    except IntegrityError:
        return False


def affected_rows(result: Result[Any]) -> int:
    """The rows an UPDATE or DELETE matched: Session.execute types its result as a Result, for any
    statement, but for these it is the driver cursor's CursorResult, which counts them."""
    return cast("CursorResult[Any]", result).rowcount


# Grouping a sync's 1,000,000 values needs 135 MB of hash table and sorting its records 100 MB:
# at PostgreSQL's default of 4 MB (or 64 MB) both spill to disk. Taken only by the few statements
# over a whole sync, one at a time per worker.
SET_BASED_WORK_MEM = "256MB"


def raise_work_mem(session: Session) -> None:
    """Give the rest of the session's transaction (a set-based statement over a whole sync) more
    memory for its sorts and hash joins; a no-op on SQLite."""
    if uses_postgresql(session):
        session.execute(text(f"SET LOCAL work_mem = '{SET_BASED_WORK_MEM}'"))


def forbid_nested_loops(session: Session) -> None:
    """Make the rest of the session's transaction join by hash (or merge), never by nested loop: for
    joins with no index on their key (a contact meets its value row by text, and an index on
    (sync_id, value) cost 1.5 s of PostgreSQL CPU per 1,000,000 values), where a nested loop
    rescans one side per row of the other. The planner takes one whenever its statistics say a side
    holds a row or two, as they do for the verdicts until sync_values is analysed again after the
    fetch: 12,000 contacts then took over two minutes, not 50 ms. A no-op on SQLite."""
    if uses_postgresql(session):
        session.execute(text("SET LOCAL enable_nestloop = off"))


def analyze(session: Session, table: str) -> None:
    """Refresh the planner's statistics of `table` after a sync loaded a million rows into it: until
    autovacuum gets to it, the planner takes the sync for a handful of rows and sorts and loops
    where it should hash (PostgreSQL only; ANALYZE samples 30,000 rows whatever the table's size)."""
    if uses_postgresql(session):
        session.execute(text(f"ANALYZE {table}"))


def copy_query_to(session: Session, query: Select[Any], options: str) -> Iterator[bytes]:
    """PostgreSQL `COPY (query) TO STDOUT WITH (options)`, in the session's transaction, as the
    blocks the server sends (a row each): the rows are never Python objects."""
    sql = query.compile(dialect=session.get_bind().dialect, compile_kwargs={"literal_binds": True})
    cursor = _driver_connection(session).cursor()
    with cursor.copy(f"COPY ({sql}) TO STDOUT WITH ({options})") as copy:
        for block in copy:
            yield bytes(block)


_COPY_ESCAPES = {"\\": "\\", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}
_COPY_ESCAPE = re.compile(r"\\(.)")


def text_rows(session: Session, query: Select[Any]) -> Iterator[list[str | None]]:
    """The query's rows with every column as text (None for NULL), as PostgreSQL's COPY writes it
    (booleans "t"/"f", times in ISO 8601): on PostgreSQL one COPY ... TO STDOUT split by tabs, no
    row object per result row; on SQLite its rows turned into the same text."""
    if not uses_postgresql(session):
        yield from (
            [_as_text(value) for value in row]
            for row in session.connection().execution_options(yield_per=5000).execute(query)
        )
        return
    for block in copy_query_to(session, query, "FORMAT text"):
        fields: list[str | None] = list(block.decode().rstrip("\n").split("\t"))
        for position, field in enumerate(fields):
            if field is not None and "\\" in field:
                fields[position] = None if field == "\\N" else _COPY_ESCAPE.sub(_unescape, field)
        yield fields


def _unescape(match: re.Match[str]) -> str:
    return _COPY_ESCAPES.get(match.group(1), match.group(1))


def _as_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def _driver_connection(session: Session) -> Any:
    driver_connection = session.connection().connection.driver_connection
    assert driver_connection is not None, "the session's connection is open: it was just checked out"
    return driver_connection


def copy_rows(session: Session, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """PostgreSQL COPY into `table`, in the session's transaction: one stream, not a statement per row."""
    cursor = _driver_connection(session).cursor()
    with cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)
