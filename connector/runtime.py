"""Per-process resources built from Settings: database engine, sessions, Redis, the RQ queue.

Built on first use in a worker or explicitly by `create_app` and the CLI, never at import.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis
from rq import Queue
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import ConnectionPoolEntry

from connector.config import Settings
from connector.extras import ExtraMissing

if TYPE_CHECKING:
    import fakeredis

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    redis: redis.Redis
    uses_fallback_broker: bool = False
    # What this process may remember between requests (rows that never change once created).
    memo: dict[Any, Any] = field(default_factory=dict, repr=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session committed on success and rolled back on error."""
        session = self.sessions()
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def queue(self) -> Queue:
        return Queue(self.settings.queue_name, connection=self.redis)

    def data_dir(self) -> Path:
        path = self.settings.data_dir
        path.mkdir(parents=True, exist_ok=True)
        return path


def make_engine(database_url: str) -> Engine:
    if database_url.startswith("sqlite"):
        _ensure_sqlite_dir(database_url)
        engine = create_engine(database_url, connect_args={"timeout": 30}, pool_pre_ping=True)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()
            # What record_history computes in SQL: PostgreSQL's md5(text) (legacy digests) and the
            # HMAC that PostgreSQL builds from its sha256(), neither of which SQLite has.
            dbapi_connection.create_function("md5", 1, _md5_hex, deterministic=True)
            dbapi_connection.create_function("hmac_sha256", 2, _hmac_sha256_hex, deterministic=True)

        return engine
    if database_url.startswith("postgresql://"):
        database_url = "postgresql+psycopg://" + database_url.removeprefix("postgresql://")
    elif database_url.startswith("postgres://"):
        database_url = "postgresql+psycopg://" + database_url.removeprefix("postgres://")
    return create_engine(database_url, pool_pre_ping=True, pool_size=5, max_overflow=5)


def _md5_hex(text: str | None) -> str | None:
    return None if text is None else hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()


def _hmac_sha256_hex(key: bytes, text: str | None) -> str | None:
    return None if text is None else hmac.new(key, text.encode(), hashlib.sha256).hexdigest()


def _ensure_sqlite_dir(database_url: str) -> None:
    path = database_url.split(":///", 1)[-1]
    if path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)


def connect_redis(url: str, *, allow_fallback: bool = False) -> tuple[redis.Redis, bool]:
    """Connect to Redis; with `allow_fallback`, use an in-process broker when none answers."""
    connection = redis.Redis.from_url(url, socket_connect_timeout=2, health_check_interval=30)
    if not allow_fallback:
        return connection, False  # connects on first use; a web process starts even while Redis is down
    try:
        connection.ping()
        return connection, False
    except redis.exceptions.ConnectionError:
        pass
    fallback = in_process_redis(needed_by="REDIS_URL does not answer; the in-process broker standing in")
    log.warning("redis_unreachable_using_in_process_broker", extra={"redis_url": _safe_url(url)})
    return fallback, True


def in_process_redis(*, needed_by: str = "the in-process broker") -> redis.Redis:
    """A client of this process's in-process Redis (fakeredis): what stands in when Redis is unreachable.

    fakeredis comes with the `sandbox` extra: without it, ExtraMissing (naming `needed_by`).
    """
    try:
        import fakeredis  # optional (the sandbox extra): imported here so a bare install runs without it
    except ModuleNotFoundError as missing:
        raise ExtraMissing(needed_by) from missing
    global _FALLBACK_SERVER
    with _FALLBACK_LOCK:  # threads of one process may reach here together
        if _FALLBACK_SERVER is None:
            _FALLBACK_SERVER = fakeredis.FakeServer()
        server = _FALLBACK_SERVER
    return fakeredis.FakeRedis(server=server)


_FALLBACK_SERVER: fakeredis.FakeServer | None = None
_FALLBACK_LOCK = threading.Lock()


def _safe_url(url: str) -> str:
    if "@" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


def build_runtime(
    settings: Settings, *, allow_fallback_broker: bool = False, in_process_broker: bool = False
) -> Runtime:
    """`in_process_broker`: never contact REDIS_URL (a demo, or a CLI run that was given no Redis)."""
    engine = make_engine(settings.database_url)
    if in_process_broker:
        connection, fallback = in_process_redis(), True
    else:
        connection, fallback = connect_redis(settings.redis_url, allow_fallback=allow_fallback_broker)
    return Runtime(
        settings=settings,
        engine=engine,
        sessions=sessionmaker(engine, expire_on_commit=False),
        redis=connection,
        uses_fallback_broker=fallback,
    )


_lock = threading.Lock()
_current: Runtime | None = None


def get_runtime() -> Runtime:
    """The process's runtime; a worker builds it from the environment on its first job."""
    global _current
    with _lock:
        if _current is None:
            _current = build_runtime(Settings.from_env())
        return _current


def set_runtime(runtime: Runtime | None) -> None:
    global _current
    with _lock:
        _current = runtime
