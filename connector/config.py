"""Settings, read from the environment when a process builds its runtime (never at import).

The names and defaults are the outside contract of DESIGN.md; anything added here has a
default so that the contract's variables alone are enough to run.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path

from connector.errors import ConfigError


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
    # Reverse proxies in front of the web process that append to X-Forwarded-For: the client address
    # (for the sign-in throttle) is the one the outermost of them saw. 0: the header is ignored.
    trusted_proxy_count: int = 0

    apexverify_base_url: str = "https://api.apexverify.com"
    apexverify_api_key: str | None = field(default=None, repr=False)
    apexverify_rate_limit_per_minute: int = 180
    apexverify_max_batch_rows: int = 500_000
    apexverify_timeout_seconds: float = 60.0

    hubspot_access_token: str | None = field(default=None, repr=False)
    hubspot_base_url: str = "https://api.hubapi.com"
    hubspot_client_secret: str | None = field(default=None, repr=False)
    hubspot_portal_id: str | None = None
    hubspot_rate_limit_per_10s: int = 100

    salesforce_instance_url: str | None = None
    salesforce_access_token: str | None = field(default=None, repr=False)
    salesforce_client_id: str | None = None
    salesforce_client_secret: str | None = field(default=None, repr=False)
    salesforce_api_version: str = "62.0"
    salesforce_org_id: str | None = None
    salesforce_webhook_token: str | None = field(default=None, repr=False)

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

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        return cls(
            database_url=_str(env, "DATABASE_URL", cls.database_url) or cls.database_url,
            redis_url=_str(env, "REDIS_URL", cls.redis_url) or cls.redis_url,
            data_dir=Path(_str(env, "CONNECTOR_DATA_DIR", "./var") or "./var"),
            admin_token=_str(env, "ADMIN_TOKEN"),
            public_base_url=_str(env, "PUBLIC_BASE_URL"),
            trusted_proxy_count=_count(env, "TRUSTED_PROXY_COUNT", 0),
            apexverify_base_url=(_str(env, "APEXVERIFY_BASE_URL", cls.apexverify_base_url) or "").rstrip("/"),
            apexverify_api_key=_str(env, "APEXVERIFY_API_KEY"),
            apexverify_rate_limit_per_minute=_int(env, "APEXVERIFY_RATE_LIMIT_PER_MINUTE", 180),
            apexverify_max_batch_rows=_int(env, "APEXVERIFY_MAX_BATCH_ROWS", 500_000),
            apexverify_timeout_seconds=_float(env, "APEXVERIFY_TIMEOUT_SECONDS", 60.0),
            hubspot_access_token=_str(env, "HUBSPOT_ACCESS_TOKEN"),
            hubspot_base_url=(_str(env, "HUBSPOT_BASE_URL", cls.hubspot_base_url) or "").rstrip("/"),
            hubspot_client_secret=_str(env, "HUBSPOT_CLIENT_SECRET"),
            hubspot_portal_id=_str(env, "HUBSPOT_PORTAL_ID"),
            hubspot_rate_limit_per_10s=_int(env, "HUBSPOT_RATE_LIMIT_PER_10S", 100),
            salesforce_instance_url=_str(env, "SALESFORCE_INSTANCE_URL"),
            salesforce_access_token=_str(env, "SALESFORCE_ACCESS_TOKEN"),
            salesforce_client_id=_str(env, "SALESFORCE_CLIENT_ID"),
            salesforce_client_secret=_str(env, "SALESFORCE_CLIENT_SECRET"),
            salesforce_api_version=_str(env, "SALESFORCE_API_VERSION", "62.0") or "62.0",
            salesforce_org_id=_str(env, "SALESFORCE_ORG_ID"),
            salesforce_webhook_token=_str(env, "SALESFORCE_WEBHOOK_TOKEN"),
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
        )

    def secrets(self) -> list[str]:
        """Every configured secret value, for log redaction."""
        names = (
            "apexverify_api_key",
            "hubspot_access_token",
            "hubspot_client_secret",
            "salesforce_access_token",
            "salesforce_client_secret",
            "salesforce_webhook_token",
            "admin_token",
        )
        return [v for v in (getattr(self, n) for n in names) if v]

    def public_dict(self) -> dict[str, object]:
        """Settings safe to show: secrets reduced to whether they are set."""
        secret_names = {f.name for f in fields(self) if f.repr is False} | {"admin_token"}
        return {
            f.name: (bool(getattr(self, f.name)) if f.name in secret_names else str(getattr(self, f.name)))
            for f in fields(self)
        }
