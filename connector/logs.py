"""Structured logs that never carry a secret.

Every record becomes one JSON line with the message as `event` plus its `extra` fields;
configured secret values are replaced by `***` wherever they appear, and so are the secrets a
process learns as it runs (an OAuth connection's tokens, read from the database: `add_secret`).
Commands run by a person
(`verify`, `demo`) get the same fields as one short line (`human=True`) and write to whatever
`sys.stderr` is at that moment, so a live view that redirects it prints them above itself.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import TextIO

_STANDARD_ATTRS = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
# Secrets learnt at run time, newest last; bounded, since a long-lived worker sees every refresh.
_LEARNT: dict[str, None] = {}
MAX_LEARNT_SECRETS = 2000


def add_secret(*values: str | None) -> None:
    """Redact these values from every log line of this process from now on."""
    for value in values:
        if value and len(value) >= 8 and value not in _LEARNT:
            _LEARNT[value] = None
            if len(_LEARNT) > MAX_LEARNT_SECRETS:
                del _LEARNT[next(iter(_LEARNT))]


class RedactingJsonFormatter(logging.Formatter):
    def __init__(self, secrets: list[str] | None = None) -> None:
        super().__init__()
        self.secrets = [s for s in (secrets or []) if len(s) >= 4]

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        entry.update(_extra_fields(record))
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return self.redact(json.dumps(entry, default=str))

    def redact(self, text: str) -> str:
        for secret in (*self.secrets, *_LEARNT):
            if secret in text:
                text = text.replace(secret, "***")
        return text


class RedactingLineFormatter(RedactingJsonFormatter):
    """`warning: step_paused sync_id=3 code=...`: one line for a person, no traceback."""

    def format(self, record: logging.LogRecord) -> str:
        event = record.getMessage().split("\n", 1)[0]
        fields = " ".join(f"{key}={value}" for key, value in _extra_fields(record).items())
        if record.exc_info and record.exc_info[1] is not None:
            fields += f" error={type(record.exc_info[1]).__name__}: {record.exc_info[1]}"
        return self.redact(f"{record.levelname.lower()}: {event} {fields}".rstrip())


def _extra_fields(record: logging.LogRecord) -> dict[str, object]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD_ATTRS and not k.startswith("_")}


class _CurrentStderrHandler(logging.StreamHandler):
    """A stream handler bound to `sys.stderr` as it is when a record is written, not when created."""

    _connector = False  # True on the one configure_logging installs

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: object) -> None:
        return None


def configure_logging(
    level: str = "INFO", secrets: list[str] | None = None, *, human: bool | None = None
) -> None:
    """Route the root logger to stderr as redacted JSON lines, or short lines with `human` (idempotent).

    `human=None` keeps the format this process chose (JSON until told otherwise), so an app a
    command starts for itself (the demo's webhooks) does not turn its output back into JSON.
    """
    root = logging.getLogger()
    ours = [handler for handler in root.handlers if getattr(handler, "_connector", False)]
    if human is None:
        human = bool(ours) and isinstance(ours[0].formatter, RedactingLineFormatter)
    formatter = (RedactingLineFormatter if human else RedactingJsonFormatter)(secrets)
    if ours:
        ours[0].setFormatter(formatter)
    else:
        handler = _CurrentStderrHandler()
        handler._connector = True
        handler.setFormatter(formatter)
        root.addHandler(handler)
    root.setLevel(level)
    # Third-party logs: HTTP libraries print full URLs and headers at DEBUG; the others chatter.
    for noisy in ("urllib3", "werkzeug", "alembic", "rq.worker", "rq.scheduler"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
