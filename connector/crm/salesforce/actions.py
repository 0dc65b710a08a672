"""Verdict actions on Salesforce contacts and leads: `opt_out` and `add_to_campaign`.

`opt_out` checks the standard "Email Opt Out" box (HasOptedOutOfEmail) of each record, an update
like the flags' (flags.py); `add_to_campaign` creates a CampaignMember per record, with the action's
member status or, without one, the campaign's default. Both go through sObject Collections of 200
or, when the sync expects more than `bulk_threshold` records, Bulk API 2.0 ingest jobs (bulk.py),
and every request through SalesforceApi.call (daily reserve, session refresh, retries).

Salesforce keeps one member per campaign and record: a second create is refused with DUPLICATE_VALUE,
which here counts as done, so a retried batch never adds a member twice. `already_done` asks what a
batch cut short by a crash already did (members of the campaign, boxes already checked) — by
`Id IN (...)` queries of 200, or one Bulk API 2.0 query job in bulk mode.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

from connector.crm.base import ActionTarget, VerdictAction, WriteFailure
from connector.crm.calls import chunks
from connector.crm.jobs import DEFAULT_BULK_THRESHOLD
from connector.crm.salesforce.api import SalesforceApi
from connector.crm.salesforce.bulk import (
    IngestRow,
    insert_rows,
    parse_bulk_error,
    query_rows,
    write_flag_rows,
)
from connector.crm.salesforce.flags import (
    BULK_BATCH_ROWS,
    COLLECTION_LIMIT,
    not_a_person,
    object_of,
    save_collection,
    updateable_fields,
)
from connector.crm.salesforce.records import READ_CHUNK, id15, rest_rows, soql_ids
from connector.crm.salesforce.webhook import OBJECTS
from connector.errors import ConfigError, ConnectorError

OPT_OUT_FIELD = "HasOptedOutOfEmail"
MEMBER = "CampaignMember"
ALREADY_A_MEMBER = "DUPLICATE_VALUE"


class SalesforceActionRunner:
    """Takes `opt_out` and `add_to_campaign` on contacts and leads: REST batches of 200, or bulk jobs."""

    def __init__(
        self,
        api: SalesforceApi,
        *,
        expected: int = 0,
        bulk_threshold: int = DEFAULT_BULK_THRESHOLD,
        work_dir: Path,
    ) -> None:
        self.api = api
        self.bulk = expected > bulk_threshold
        self.batch_size = BULK_BATCH_ROWS if self.bulk else COLLECTION_LIMIT
        self.work_dir = work_dir / "actions"

    # -- prepare

    def prepare(self, action: VerdictAction) -> None:
        if action.do == "opt_out":
            self._check_opt_out_field()
        elif action.do == "add_to_campaign":
            self._check_campaign(action)
        else:
            raise ConfigError("unknown_action", f"Salesforce cannot take the action {action.do!r}")

    def _check_opt_out_field(self) -> None:
        lacking = []
        for object_name in OBJECTS:
            if OPT_OUT_FIELD.lower() not in updateable_fields(self.api, object_name):
                lacking.append(object_name)
        if lacking:
            raise ConnectorError(
                "salesforce_fields_missing",
                f"{OPT_OUT_FIELD} (Email Opt Out) is missing or not updateable on {', '.join(lacking)}: "
                "the connector's user needs edit access to it for the opt_out action",
            )

    def _check_campaign(self, action: VerdictAction) -> None:
        campaign = _campaign_id(action)
        if not self.api.query(f"SELECT Id FROM Campaign WHERE Id = '{campaign}'").get("records"):
            raise ConnectorError(
                "salesforce_campaign_not_found",
                f"Salesforce campaign {action.target} does not exist (add_to_campaign)",
            )
        if action.status is None:
            return
        soql = f"SELECT Label FROM CampaignMemberStatus WHERE CampaignId = '{campaign}'"
        labels = [str(row.get("label")) for row in rest_rows(self.api, soql)]
        if action.status not in labels:
            raise ConnectorError(
                "salesforce_campaign_status_unknown",
                f"Salesforce campaign {action.target} has no member status {action.status!r} "
                f"(it has: {', '.join(labels) or 'none'})",
            )

    # -- already done

    def already_done(self, action: VerdictAction, targets: list[ActionTarget]) -> set[str]:
        """Targets the org shows acted on, by their own record id (15 or 18 characters)."""
        wanted: dict[str, tuple[str, str]] = {}  # 15-character id -> (record id, Contact | Lead)
        for target in targets:
            short, object_name = id15(target.record_id), object_of(target.record_id, target.object_type)
            if short is not None and object_name is not None:
                wanted[short] = (target.record_id, object_name)
        if not wanted:
            return set()
        found = self._members(action, wanted) if action.do == "add_to_campaign" else self._opted_out(wanted)
        return {wanted[short][0] for short in found if short in wanted}

    def _members(self, action: VerdictAction, wanted: dict[str, tuple[str, str]]) -> Iterator[str]:
        """The 15-character ids of the campaign's members among `wanted` (all of them in bulk mode)."""
        where = f"CampaignId = '{_campaign_id(action)}'"
        if self.bulk:
            soql = f"SELECT ContactId, LeadId FROM {MEMBER} WHERE {where}"
            rows = query_rows(self.api, soql, ["ContactId", "LeadId"], work_dir=self.work_dir)
            yield from (cell[:15] for row in rows for cell in row if cell)
            return
        for object_name, shorts in _by_object(wanted):
            for chunk in chunks(shorts, READ_CHUNK):
                id_field = f"{object_name}Id"
                soql = f"SELECT {id_field} FROM {MEMBER} WHERE {where} AND {id_field} IN ({soql_ids(chunk)})"
                yield from (str(row[id_field.lower()])[:15] for row in rest_rows(self.api, soql))

    def _opted_out(self, wanted: dict[str, tuple[str, str]]) -> Iterator[str]:
        """The 15-character ids among `wanted` whose Email Opt Out box is checked."""
        for object_name, shorts in _by_object(wanted):
            checked = f"SELECT Id FROM {object_name} WHERE {OPT_OUT_FIELD} = true"
            if self.bulk:
                yield from (
                    row[0][:15] for row in query_rows(self.api, checked, ["Id"], work_dir=self.work_dir)
                )
                continue
            for chunk in chunks(shorts, READ_CHUNK):
                soql = f"{checked} AND Id IN ({soql_ids(chunk)})"
                yield from (str(row["id"])[:15] for row in rest_rows(self.api, soql))

    # -- run

    def run(self, action: VerdictAction, targets: list[ActionTarget]) -> list[WriteFailure]:
        refused: list[WriteFailure] = []
        people: list[tuple[str, str]] = []  # (record id, Contact | Lead)
        for target in dict.fromkeys(targets):
            object_name = object_of(target.record_id, target.object_type)
            if object_name is None:
                refused.append(not_a_person(target.record_id))
            else:
                people.append((target.record_id, object_name))
        if not people:
            return refused
        if action.do == "opt_out":
            return refused + self._opt_out(people)
        if action.do == "add_to_campaign":
            return refused + [f for f in self._add_to_campaign(action, people) if f.code != ALREADY_A_MEMBER]
        raise ConfigError("unknown_action", f"Salesforce cannot take the action {action.do!r}")

    def _opt_out(self, people: list[tuple[str, str]]) -> list[WriteFailure]:
        if self.bulk:
            rows = (IngestRow(object_name, record_id, ["true"]) for record_id, object_name in people)
            return write_flag_rows(self.api, [OPT_OUT_FIELD], rows, work_dir=self.work_dir)
        failures = []
        for chunk in chunks(people, COLLECTION_LIMIT):
            # One run per type: Salesforce processes a mixed list in runs of one type, at most 10 a call.
            chunk.sort(key=lambda person: person[1])
            records = [
                {"attributes": {"type": object_name}, "Id": record_id, OPT_OUT_FIELD: True}
                for record_id, object_name in chunk
            ]
            failures.extend(
                save_collection(self.api, "PATCH", records, [record_id for record_id, _ in chunk])
            )
        return failures

    def _add_to_campaign(self, action: VerdictAction, people: list[tuple[str, str]]) -> list[WriteFailure]:
        campaign = _campaign_id(action)
        status = {"Status": action.status} if action.status else {}
        if self.bulk:
            return self._insert_members(campaign, action.status, people)
        failures = []
        for chunk in chunks(people, COLLECTION_LIMIT):
            records = [
                {
                    "attributes": {"type": MEMBER},
                    "CampaignId": campaign,
                    f"{object_name}Id": record_id,
                    **status,
                }
                for record_id, object_name in chunk
            ]
            failures.extend(save_collection(self.api, "POST", records, [record_id for record_id, _ in chunk]))
        return failures

    def _insert_members(
        self, campaign: str, status: str | None, people: list[tuple[str, str]]
    ) -> list[WriteFailure]:
        columns = ["CampaignId", "ContactId", "LeadId", *(["Status"] if status else [])]

        def rows() -> Iterable[list[str]]:
            for record_id, object_name in people:
                person = [record_id, ""] if object_name == "Contact" else ["", record_id]
                yield [campaign, *person, *([status] if status else [])]

        failures = []
        for row in insert_rows(self.api, MEMBER, columns, rows(), work_dir=self.work_dir):
            code, message = parse_bulk_error(row.get("sf__Error") or "")
            failures.append(WriteFailure(row.get("ContactId") or row.get("LeadId") or "", code, message))
        return failures


def _campaign_id(action: VerdictAction) -> str:
    """The action's campaign id in its 15-character form; ConnectorError when it is malformed."""
    campaign = id15((action.target or "").strip())
    if campaign is None or not campaign.startswith("701"):
        raise ConnectorError(
            "salesforce_campaign_not_found",
            f"{action.target!r} is not a Salesforce campaign id (add_to_campaign)",
        )
    return campaign


def _by_object(wanted: dict[str, tuple[str, str]]) -> Iterator[tuple[str, list[str]]]:
    """(Contact | Lead, the 15-character ids of that object) for each object among `wanted`."""
    for object_name in OBJECTS:
        shorts = [short for short, (_, of_object) in wanted.items() if of_object == object_name]
        if shorts:
            yield object_name, shorts
