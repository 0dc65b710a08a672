"""Settings, read from the environment when a process builds its runtime (never at import).

The names and defaults are the outside contract of DESIGN.md; anything added here has a
default so that the contract's variables alone are enough to run.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote

from connector.errors import ConfigError

SectionT = TypeVar("SectionT")


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError("invalid_setting", f"{name} must be an integer, got {raw!r}") from None


def _count(env: Mapping[str, str], name: str, default: int) -> int:
    value = _int(env, name, default)
    if value < 0:
        raise ConfigError("invalid_setting", f"{name} must be 0 or more, got {value}")
    return value


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise ConfigError("invalid_setting", f"{name} must be a number, got {raw!r}") from None


def _str(env: Mapping[str, str], name: str, default: str | None = None) -> str | None:
    raw = env.get(name)
    return raw if raw not in (None, "") else default


@dataclass(frozen=True)
class Settings:
    database_url: str = "sqlite:///var/connector.db"
    redis_url: str = "redis://localhost:6379/0"
    data_dir: Path = Path("./var")
    admin_token: str | None = None
    public_base_url: str | None = None
    # Fernet key(s), comma-separated: the first encrypts, all decrypt (connector/secretbox.py).
    secret_key: str | None = field(default=None, repr=False)
    # Reverse proxies in front of the web process that append to X-Forwarded-For: the client address
    # (for the sign-in throttle) is the one the outermost of them saw. 0: the header is ignored.
    trusted_proxy_count: int = 0

    apexverify_base_url: str = "https://api.apexverify.com"
    apexverify_api_key: str | None = field(default=None, repr=False)
    apexverify_rate_limit_per_minute: int = 180
    apexverify_max_batch_rows: int = 500_000
    apexverify_timeout_seconds: float = 60.0

    coalesce_max_contacts: int = 10_000
    coalesce_window_seconds: int = 60
    # Country used to parse phones of webhook contacts and CRM segments without one of their own.
    default_country: str = "US"
    max_request_bytes: int = 10 * 1024 * 1024

    # Internal knobs (not part of the contract; defaults suit production).
    poll_initial_seconds: float = 5.0
    poll_max_seconds: float = 60.0
    step_lease_seconds: int = 300
    # A sync paused by an outage waits 1, 2, 4 ... s between tries, at most this long.
    pause_max_seconds: float = 120.0
    queue_name: str = "connector"
    data_retention_days: int = 7
    log_level: str = "INFO"
    # Above this many updates a CRM writer uses its bulk path (one import/ingest job) instead of
    # REST batches, and a segment read uses a bulk export/query.
    crm_bulk_threshold: int = 10_000

    # Alerts (connector/pipeline/alerts.py): where they go, and the thresholds of two kinds. The
    # Slack webhook URL and SMTP_URL carry credentials in themselves, so they are secrets too.
    alert_webhook_url: str | None = None
    alert_webhook_secret: str | None = field(default=None, repr=False)
    alert_slack_webhook_url: str | None = field(default=None, repr=False)
    alert_email_to: str | None = None
    smtp_url: str | None = field(default=None, repr=False)
    alert_email_from: str | None = None
    alert_pause_minutes: int = 30
    alert_write_failure_percent: float = 5.0
    # Each try to reach an alert target (connect, send, answer) gives up after this long.
    alert_timeout_seconds: float = 10.0
    # A CA bundle the SMTP server's certificate is checked against instead of the system's.
    smtp_ca_file: str | None = None
    # The environment these settings were read from: each CRM reads its own section of it
    # (`section`), so a CRM's variables are declared in its package, not here.
    env: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)
    _sections: dict[type, object] = field(default_factory=dict, init=False, repr=False, compare=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        return cls(
            database_url=_str(env, "DATABASE_URL", cls.database_url) or cls.database_url,
            redis_url=_str(env, "REDIS_URL", cls.redis_url) or cls.redis_url,
            data_dir=Path(_str(env, "CONNECTOR_DATA_DIR", "./var") or "./var"),
            admin_token=_str(env, "ADMIN_TOKEN"),
            public_base_url=_str(env, "PUBLIC_BASE_URL"),
            secret_key=_str(env, "CONNECTOR_SECRET_KEY"),
            trusted_proxy_count=_count(env, "TRUSTED_PROXY_COUNT", 0),
            apexverify_base_url=(_str(env, "APEXVERIFY_BASE_URL", cls.apexverify_base_url) or "").rstrip("/"),
            apexverify_api_key=_str(env, "APEXVERIFY_API_KEY"),
            apexverify_rate_limit_per_minute=_int(env, "APEXVERIFY_RATE_LIMIT_PER_MINUTE", 180),
            apexverify_max_batch_rows=_int(env, "APEXVERIFY_MAX_BATCH_ROWS", 500_000),
            apexverify_timeout_seconds=_float(env, "APEXVERIFY_TIMEOUT_SECONDS", 60.0),
            coalesce_max_contacts=_int(env, "COALESCE_MAX_CONTACTS", 10_000),
            coalesce_window_seconds=_int(env, "COALESCE_WINDOW_SECONDS", 60),
            default_country=(_str(env, "CONNECTOR_DEFAULT_COUNTRY", "US") or "US").upper(),
            max_request_bytes=_int(env, "CONNECTOR_MAX_REQUEST_BYTES", 10 * 1024 * 1024),
            poll_initial_seconds=_float(env, "CONNECTOR_POLL_INITIAL_SECONDS", 5.0),
            poll_max_seconds=_float(env, "CONNECTOR_POLL_MAX_SECONDS", 60.0),
            step_lease_seconds=_int(env, "CONNECTOR_STEP_LEASE_SECONDS", 300),
            pause_max_seconds=_float(env, "CONNECTOR_PAUSE_MAX_SECONDS", 120.0),
            queue_name=_str(env, "CONNECTOR_QUEUE", "connector") or "connector",
            data_retention_days=_int(env, "DATA_RETENTION_DAYS", 7),
            log_level=(_str(env, "LOG_LEVEL", "INFO") or "INFO").upper(),
            crm_bulk_threshold=_count(env, "CONNECTOR_CRM_BULK_THRESHOLD", 10_000),
            alert_webhook_url=_str(env, "ALERT_WEBHOOK_URL"),
            alert_webhook_secret=_str(env, "ALERT_WEBHOOK_SECRET"),
            alert_slack_webhook_url=_str(env, "ALERT_SLACK_WEBHOOK_URL"),
            alert_email_to=_str(env, "ALERT_EMAIL_TO"),
            smtp_url=_str(env, "SMTP_URL"),
            alert_email_from=_str(env, "ALERT_EMAIL_FROM"),
            alert_pause_minutes=_count(env, "ALERT_PAUSE_MINUTES", 30),
            alert_write_failure_percent=_float(env, "ALERT_WRITE_FAILURE_PERCENT", 5.0),
            alert_timeout_seconds=_float(env, "ALERT_TIMEOUT_SECONDS", 10.0),
            smtp_ca_file=_str(env, "SMTP_CA_FILE"),
            env=dict(env),
        )

    def section(self, cls: type[SectionT]) -> SectionT:
        """The settings `cls` declares (a CRM's), read from this environment once and remembered."""
        found = self._sections.get(cls)
        if found is None:
            found = self._sections[cls] = read_section(cls, self.env)
        assert isinstance(found, cls)
        return found

    def secrets(self) -> list[str]:
        """Every configured secret value, for log redaction."""
        keys = (self.secret_key or "").split(",")
        alerts = (self.alert_webhook_secret, self.alert_slack_webhook_url, *smtp_passwords(self.smtp_url))
        own = [
            v.strip() for v in (self.apexverify_api_key, self.admin_token, *keys, *alerts) if v and v.strip()
        ]
        return own + [value for name, value in self.env.items() if value and is_secret_name(name)]

    def public_dict(self) -> dict[str, object]:
        """Settings safe to show: secrets reduced to whether they are set."""
        secret_names = {f.name for f in fields(self) if f.repr is False} | {"admin_token"}
        return {
            f.name: (bool(getattr(self, f.name)) if f.name in secret_names else str(getattr(self, f.name)))
            for f in fields(self)
            if f.name not in ("env", "_sections")
        }


def smtp_passwords(url: str | None) -> tuple[str, ...]:
    """The password of an `smtp://user:pass@host:port` URL, as written there and percent-decoded."""
    if not url or "@" not in url or "://" not in url:
        return ()
    credentials = url.split("://", 1)[1].rsplit("@", 1)[0]
    if ":" not in credentials:
        return ()
    written = credentials.split(":", 1)[1]
    return (written, unquote(written))


# A section's secret settings end in one of these (a CRM's ..._ACCESS_TOKEN, ..._CLIENT_SECRET):
# that is how `Settings.secrets` finds them for log redaction without knowing the section.
SECRET_SUFFIXES = ("_TOKEN", "_SECRET", "_API_KEY", "_PASSWORD")


def is_secret_name(name: str) -> bool:
    return name.endswith(SECRET_SUFFIXES)


def read_section(cls: type[SectionT], env: Mapping[str, str]) -> SectionT:
    """A frozen dataclass whose fields name their variable (`field(metadata={"env": ...})`), read
    from `env`: a blank or missing variable keeps the field's default; ints and floats are checked;
    URLs lose a trailing slash. A secret field (`repr=False`) must have a secret-looking name."""
    values: dict[str, Any] = {}
    for f in fields(cls):  # type: ignore[arg-type]
        name = f.metadata["env"]
        if f.repr is False and not is_secret_name(name):
            raise ConfigError("invalid_setting", f"{name} is secret but its name does not say so")
        if f.default is MISSING:
            raise ConfigError("invalid_setting", f"{name} needs a default")
        values[f.name] = _typed(env, name, f.default)
    return cls(**values)


def _typed(env: Mapping[str, str], name: str, default: Any) -> Any:
    if isinstance(default, bool):
        raise ConfigError("invalid_setting", f"{name}: boolean settings are not supported")
    if isinstance(default, int):
        return _count(env, name, default)
    if isinstance(default, float):
        return _float(env, name, default)
    raw = _str(env, name, default)
    return raw.rstrip("/") if raw and name.endswith("_URL") else raw
