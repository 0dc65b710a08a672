"""gunicorn's own log lines without webhook secrets (the Procfile's `web` uses this logger class).

Some CRMs' webhooks carry the connection's webhook secret in the URL (`?token=`), because the CRM
cannot add a header to them. gunicorn's access log is off by default, but an operator can
turn it on (`--access-logfile`, `GUNICORN_CMD_ARGS`, a config file), and its default format prints
the request line with its query string; its error log prints the URI of a request that failed. This
logger redacts, whatever the configured format: every `token` query parameter (a wrong token may be
another connection's secret, or a typo of ours), the headers and environ entries that carry
credentials, and every secret value the environment configures.
"""

from __future__ import annotations

import logging
import re
from collections.abc import MutableMapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any, cast

from gunicorn.glogging import Logger

from connector.config import Settings

if TYPE_CHECKING:
    from gunicorn.config import Config
    from gunicorn.glogging import _AtomsDict
    from gunicorn.http import Request
    from gunicorn.http.wsgi import Response

REDACTED = "***"
# `token=` as a query parameter, wherever a URI or query string appears in a line.
_TOKEN_PARAM = re.compile(r"(?i)((?:^|[?&;])token=)[^&;\s\"']*")
_SENSITIVE_ATOMS = frozenset(
    {
        "{authorization}i", "{cookie}i", "{x-connector-token}i", "{x-api-key}i",
        "{http_authorization}e", "{http_cookie}e", "{http_x_connector_token}e", "{http_x_api_key}e",
    }
)  # fmt: skip


def redact(text: str, secrets: list[str]) -> str:
    text = _TOKEN_PARAM.sub(lambda match: match.group(1) + REDACTED, text)
    for secret in secrets:
        text = text.replace(secret, REDACTED)
    return text


class _RedactingFilter(logging.Filter):
    """Formats each record once and keeps only the redacted text."""

    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self.secrets = secrets

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage(), self.secrets)
        record.args = None
        return True


class RedactingLogger(Logger):
    def setup(self, cfg: Config) -> None:
        super().setup(cfg)
        try:
            secrets = [s for s in Settings.from_env().secrets() if len(s) >= 4]
        except Exception:  # noqa: BLE001 - a malformed setting fails the app later, with its own message
            secrets = []
        for log in (self.error_log, self.access_log):  # setup runs again on a reload (SIGHUP)
            for old in [f for f in log.filters if isinstance(f, _RedactingFilter)]:
                log.removeFilter(old)
            log.addFilter(_RedactingFilter(secrets))

    def atoms(
        self, resp: Response, req: Request, environ: MutableMapping[str, Any], request_time: timedelta
    ) -> _AtomsDict:
        atoms = super().atoms(resp, req, environ, request_time)
        # A plain dict, with keys the stubs' TypedDict does not list: "{header}i", "{header}o", "{key}e".
        entries = cast("MutableMapping[str, Any]", atoms)
        for name, value in entries.items():
            if name.lower() in _SENSITIVE_ATOMS:
                entries[name] = REDACTED
            elif isinstance(value, str):
                entries[name] = redact(value, [])
        return atoms
