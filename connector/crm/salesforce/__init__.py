"""Salesforce: orgs, campaigns, SOQL segments, Contact and Lead flag fields, verdict actions
(Email Opt Out, campaign membership).

`CRM` is all the rest of the connector knows of Salesforce. The factories import the API
modules when first called, so a process that never calls Salesforce does not load
simple-salesforce.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from connector.config import Settings
from connector.crm.base import (
    ActionKind,
    ActionRunner,
    Crm,
    CrmContext,
    FlagWriter,
    RecordReader,
    SegmentKind,
    SegmentSource,
)
from connector.crm.salesforce.oauth import OAUTH
from connector.crm.salesforce.settings import SalesforceSettings
from connector.crm.salesforce.webhook import OBJECTS, read_webhook
from connector.errors import InputError


def _segment_source(context: CrmContext, source: Mapping[str, Any], type_: str) -> SegmentSource:
    from connector.crm.salesforce.records import SalesforceSegmentSource  # loads simple-salesforce

    return SalesforceSegmentSource(
        _api(context),
        source,
        type_,
        bulk_threshold=context.settings.crm_bulk_threshold,
        field_names=context.field_names,
        work_dir=context.work_dir,
    )


def _record_reader(context: CrmContext) -> RecordReader:
    from connector.crm.salesforce.records import SalesforceRecordReader  # loads simple-salesforce

    return SalesforceRecordReader(_api(context), field_names=context.field_names)


def _flag_writer(
    context: CrmContext, type_: str, expected_updates: int, objects: tuple[str, ...]
) -> FlagWriter:
    from connector.crm.salesforce.flags import SalesforceFlagWriter  # loads simple-salesforce

    return SalesforceFlagWriter(
        _api(context),
        type_,
        objects=objects,
        expected_updates=expected_updates,
        bulk_threshold=context.settings.crm_bulk_threshold,
        field_names=context.field_names,
        work_dir=context.work_dir,
    )


def _action_runner(context: CrmContext, type_: str, expected: int) -> ActionRunner:
    from connector.crm.salesforce.actions import SalesforceActionRunner  # loads simple-salesforce

    return SalesforceActionRunner(
        _api(context),
        expected=expected,
        bulk_threshold=context.settings.crm_bulk_threshold,
        work_dir=context.work_dir,
    )


def _api(context: CrmContext) -> Any:
    from connector.crm.salesforce.api import SalesforceApi  # loads simple-salesforce

    return SalesforceApi(context.settings, sleep=context.sleep, account=context.account)


def _check_object(raw: object) -> str:
    if raw not in OBJECTS:
        raise InputError("invalid_object", "object must be Contact or Lead for Salesforce segments")
    return str(raw)


def _same_campaign(ref: str) -> str:
    """A campaign id in its 15-character form: the 18-character one only adds a case-safe suffix."""
    return ref[:15] if len(ref) == 18 else ref


def _soql_where(ref: str) -> str:
    if ";" in ref:
        raise InputError("invalid_ref", "a SOQL WHERE clause cannot contain ';'")
    return ref.strip()


def _org_id(settings: Settings) -> str | None:
    return settings.section(SalesforceSettings).org_id


def _same_org(org_id: str) -> str:
    """An org id in its 15-character form: the 18-character one only adds a case-safe suffix."""
    return org_id.strip()[:15]


def _env_configured(settings: Settings) -> bool:
    own = settings.section(SalesforceSettings)
    return bool(own.instance_url and (own.access_token or (own.client_id and own.client_secret)))


CRM = Crm(
    name="salesforce",
    label="Salesforce",
    settings=SalesforceSettings,
    account_id=_org_id,
    segment_kinds=(
        SegmentKind("salesforce_campaign", "campaign id", same_ref=_same_campaign),
        SegmentKind("salesforce_soql", "SOQL WHERE clause", check_ref=_soql_where),
    ),
    check_object=_check_object,
    objects=OBJECTS,
    segment_source=_segment_source,
    record_reader=_record_reader,
    flag_writer=_flag_writer,
    read_webhook=read_webhook,
    read_back_buffered=True,
    oauth=OAUTH,
    same_account=_same_org,
    routes_by_secret=True,
    env_configured=_env_configured,
    actions=(
        ActionKind("opt_out", email_only=True),
        ActionKind("add_to_campaign", target_field="campaign_id", takes_status=True),
    ),
    action_runner=_action_runner,
    webhook_openapi={
        "summary": "Salesforce outbound messages (text/xml) and Flow callouts (application/json)",
        "parameters": [
            {
                "name": "token",
                "in": "query",
                "description": "the connection's webhook secret (outbound messages)",
                "schema": {"type": "string"},
            },
            {
                "name": "X-Connector-Token",
                "in": "header",
                "description": "the connection's webhook secret (Flow callouts)",
                "schema": {"type": "string"},
            },
        ],
        "requestBody": {
            "content": {
                "text/xml": {"schema": {"type": "string"}},
                "application/json": {"schema": {}},
            }
        },
        "responses": {"200": {"description": "SOAP Ack, or {accepted}"}},
    },
    webhook_errors=(400, 401, 403, 413, 415, 503),
)
