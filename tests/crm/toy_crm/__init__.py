"""A toy CRM, written the way README's "Adding a CRM" says: this package and one `register` call.

Its "account" is a dict in this process: records by id with an email, and the flags written back.
It has a settings section (TOY_ACCOUNT, TOY_WEBHOOK_TOKEN), one segment kind (`toy_list`: every
record whose list matches the ref), a webhook (`X-Toy-Token`, JSON `{"list": ...}` or
`{"records": [{"id": ..., "email": ...}]}`) and a flag writer.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from connector.config import Settings
from connector.crm.base import (
    DELETED,
    Crm,
    CrmContext,
    FlagUpdate,
    IncomingContact,
    RecordFate,
    SegmentKind,
    SegmentTrigger,
    SourceRecord,
    WebhookDelivery,
    WebhookRequest,
    WriteFailure,
)
from connector.errors import ConfigError, InputError, WebhookRefused

# id → {"list": ..., "email": ..., "flags": {...}}
RECORDS: dict[str, dict[str, Any]] = {}


@dataclass(frozen=True)
class ToySettings:
    account: str | None = field(default=None, metadata={"env": "TOY_ACCOUNT"})
    webhook_token: str | None = field(default=None, repr=False, metadata={"env": "TOY_WEBHOOK_TOKEN"})


class ToyListSource:
    def __init__(self, list_name: str) -> None:
        self.list_name = list_name

    def iter_records(self) -> Iterator[SourceRecord]:
        for record_id, record in sorted(RECORDS.items()):
            if record["list"] == self.list_name:
                yield SourceRecord(record_id, record["email"])


class ToyReader:
    def read_records(self, record_ids: list[str], type_: str) -> Iterator[SourceRecord]:
        for record_id in record_ids:
            if record_id in RECORDS:
                yield SourceRecord(record_id, RECORDS[record_id]["email"])

    def fates(self, failures: list[WriteFailure], type_: str) -> list[RecordFate]:
        """A record the toy CRM does not have (any more) was deleted."""
        return [RecordFate(f.record_id, DELETED) for f in failures if f.record_id not in RECORDS]


class ToyFlagWriter:
    batch_size = 50

    def prepare(self) -> None:
        return None

    def write(self, updates: Iterable[FlagUpdate]) -> list[WriteFailure]:
        failures = []
        for update in updates:
            record = RECORDS.get(update.record_id)
            if record is None:
                failures.append(WriteFailure(update.record_id, "not_found", "no such record"))
                continue
            verdict = update.verdict
            record["flags"] = {"status": verdict.status, "valid": verdict.valid, "wrong": verdict.wrong}
        return failures


def read_webhook(settings: Settings, request: WebhookRequest) -> list[WebhookDelivery]:
    token = settings.section(ToySettings).webhook_token
    if not token:
        raise ConfigError("toy_not_configured", "TOY_WEBHOOK_TOKEN is not set")
    sent = request.headers.get("X-Toy-Token") or ""
    if not hmac.compare_digest(sent.encode(), token.encode()):
        raise WebhookRefused("token_invalid", "X-Toy-Token is missing or wrong")
    # One account, the environment's: every delivery is its connection's.
    connection_id = request.accounts.connection_of(None)
    if connection_id is None:
        raise WebhookRefused("account_unknown", "the toy account has no connection", http_status=403)
    body = json.loads(request.body)
    if "list" in body:
        name = str(body["list"])
        trigger = SegmentTrigger({"kind": "toy_list", "ref": name}, "email", f"Toy list {name}")
        return [WebhookDelivery(connection_id=connection_id, segment=trigger)]
    contacts = [("email", IncomingContact(str(r["id"]), r.get("email"))) for r in body.get("records", [])]
    return [WebhookDelivery(connection_id=connection_id, unkeyed=contacts)]


def _check_object(raw: object) -> None:
    if raw is not None:
        raise InputError("invalid_object", "toy segments hold one kind of record; leave object out")


def _segment_source(context: CrmContext, source: Mapping[str, Any], type_: str) -> ToyListSource:
    return ToyListSource(source["ref"])


def _flag_writer(context: CrmContext, type_: str, expected: int, objects: tuple[str, ...]) -> ToyFlagWriter:
    return ToyFlagWriter()


CRM = Crm(
    name="toy",
    label="Toy",
    settings=ToySettings,
    account_id=lambda settings: settings.section(ToySettings).account,
    segment_kinds=(SegmentKind("toy_list", "list name"),),
    check_object=_check_object,
    objects=(),
    segment_source=_segment_source,
    record_reader=lambda context: ToyReader(),
    flag_writer=_flag_writer,
    read_webhook=read_webhook,
    webhook_openapi={"summary": "Toy deliveries", "responses": {"200": {"description": "stored"}}},
)
