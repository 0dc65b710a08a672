"""HubSpot: portals, lists, contacts, their flag properties and verdict actions.

`CRM` is all the rest of the connector knows of HubSpot. The factories import the API modules
when first called, so a process that never calls HubSpot (the CLI, a webhook-only web process)
does not load hubspot-api-client (0.2 s and 60 MB of generated models).
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
from connector.crm.hubspot.oauth import OAUTH
from connector.crm.hubspot.settings import HubSpotSettings
from connector.crm.hubspot.webhook import read_webhook
from connector.errors import InputError


def _segment_source(context: CrmContext, source: Mapping[str, Any], type_: str) -> SegmentSource:
    from connector.crm.hubspot.records import HubSpotListSource  # loads the client library: see above

    return HubSpotListSource(
        _api(context),
        source["ref"],
        type_,
        work_dir=context.work_dir,
        bulk_threshold=context.settings.crm_bulk_threshold,
    )


def _record_reader(context: CrmContext) -> RecordReader:
    from connector.crm.hubspot.records import HubSpotRecordReader  # loads the client library: see above

    return HubSpotRecordReader(_api(context), field_names=context.field_names)


def _flag_writer(
    context: CrmContext, type_: str, expected_updates: int, objects: tuple[str, ...]
) -> FlagWriter:
    from connector.crm.hubspot.flags import HubSpotFlagWriter  # loads the client library: see above

    return HubSpotFlagWriter(
        _api(context),
        type_,
        expected_updates=expected_updates,
        bulk_threshold=context.settings.crm_bulk_threshold,
        field_names=context.field_names,
        work_dir=context.work_dir,
    )


def _action_runner(context: CrmContext, type_: str, expected: int) -> ActionRunner:
    from connector.crm.hubspot.actions import HubSpotActionRunner  # loads the client library: see above

    return HubSpotActionRunner(_api(context), type_, bulk=expected > context.settings.crm_bulk_threshold)


def _api(context: CrmContext) -> Any:
    from connector.crm.hubspot.api import HubSpotApi  # loads the client library: see above

    return HubSpotApi(context.settings, context.redis, sleep=context.sleep, account=context.account)


def _check_object(raw: object) -> None:
    if raw not in (None, "contact", "Contact"):
        raise InputError("invalid_object", "HubSpot segments are contacts; leave object out")


def _portal_id(settings: Settings) -> str | None:
    return settings.section(HubSpotSettings).portal_id


def _same_portal(portal_id: str) -> str:
    return portal_id.strip()


def _env_configured(settings: Settings) -> bool:
    return bool(settings.section(HubSpotSettings).access_token)


CRM = Crm(
    name="hubspot",
    label="HubSpot",
    settings=HubSpotSettings,
    account_id=_portal_id,
    segment_kinds=(SegmentKind("hubspot_list", "list id"),),
    check_object=_check_object,
    objects=(),
    segment_source=_segment_source,
    record_reader=_record_reader,
    flag_writer=_flag_writer,
    read_webhook=read_webhook,
    oauth=OAUTH,
    same_account=_same_portal,
    env_configured=_env_configured,
    actions=(ActionKind("opt_out", email_only=True), ActionKind("add_to_list", target_field="list_id")),
    action_runner=_action_runner,
    webhook_openapi={
        "summary": "HubSpot events, workflow webhooks, segment triggers (signed v3)",
        "requestBody": {"content": {"application/json": {"schema": {}}}},
        "responses": {
            "200": {
                "description": "stored",
                "content": {
                    "application/json": {
                        "schema": {"type": "object", "properties": {"accepted": {"type": "integer"}}}
                    }
                },
            }
        },
    },
)
