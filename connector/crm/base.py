"""The small protocol every contact source and flag writer keeps, and what a CRM declares.

A source yields the records of a segment, streamed; a writer puts verdict flags back onto
records and reports, per record, whether the CRM took them. A `Crm` bundles a CRM's settings,
segment kinds, webhook reader and the factories of its sources and writers: the rest of the
connector reaches a CRM only through it (crm/registry.py holds the table).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from connector.config import Settings
from connector.errors import ConnectorError

if TYPE_CHECKING:  # for annotations only: importing redis costs 150 ms, which every CLI command would pay
    from redis import Redis


@dataclass(frozen=True)
class SourceRecord:
    record_id: str
    value: str | None
    object_type: str | None = None
    # When the CRM says this record was last verified by us (skips it when recent).
    verified_at: datetime | None = None


@dataclass(frozen=True)
class Verdict:
    status: str  # valid | wrong | unknown | invalid_format
    valid: bool
    wrong: bool
    unknown: bool
    is_role: bool | None
    is_disposable: bool | None
    verified_at: datetime


def cells_per_verdict(format_cells: Callable[[Verdict], list[str]]) -> Callable[[Verdict], list[str]]:
    """`format_cells`, remembered: a million contacts share a few thousand verdicts at most, so the
    bulk writers format each distinct verdict once instead of once per contact."""
    return functools.lru_cache(maxsize=4096)(format_cells)


@dataclass(frozen=True)
class IncomingContact:
    """A contact a webhook delivery names, on its way to the coalescing buffer."""

    record_id: str
    value: str | None = None
    object_type: str = ""
    # When the CRM says the value was observed (an event's own time); None: when it reached us.
    occurred_at: datetime | None = None


class FlagUpdate(NamedTuple):
    """One record's verdict to write. A named tuple, made per contact at write-back: 0.38 s per
    1,000,000 against a frozen dataclass's 0.96 s."""

    record_id: str
    object_type: str | None
    verdict: Verdict


@dataclass(frozen=True)
class WriteFailure:
    record_id: str
    code: str
    message: str
    # The CRM refused this record for now, not for good (a 429 or 5xx for it alone, a locked row):
    # the write-back tries it again in the same run before it counts as a failure.
    transient: bool = False


# What became of a record a write could not reach (RecordFate.reason).
DELETED = "deleted"  # deleted, archived, in the recycle bin: it ends `skipped`, reason `deleted`
MERGED_INTO = "merged_into"  # a contact merged into another: the flags go onto the survivor
CONVERTED_TO = "converted_to"  # a lead converted to a contact: the flags go onto the contact


@dataclass(frozen=True)
class RecordFate:
    """A record a write was refused for because it is no longer there as it was (RecordReader.fates)."""

    record_id: str
    reason: str  # DELETED, MERGED_INTO or CONVERTED_TO
    # The record it now is (MERGED_INTO, CONVERTED_TO), its type, and the email or phone it holds
    # as the CRM has it (compared, normalized, with the value verified before anything is written).
    successor_id: str | None = None
    successor_type: str | None = None
    successor_value: str | None = None


# The verdicts a segment's actions can be taken on (`when`), as the contract names them.
VERDICT_CONDITIONS = ("wrong", "invalid_format", "disposable", "role", "unknown")


@dataclass(frozen=True)
class ActionKind:
    """One thing a CRM can do to a record after its flags are written (a segment action's `do`)."""

    name: str  # "opt_out", "add_to_list", "add_to_campaign"
    # The field naming what the action adds the record to ("list_id", "campaign_id"); None: nothing.
    target_field: str | None = None
    # It acts on an email address (an unsubscribe): refused on phone segments.
    email_only: bool = False
    # It takes an optional `status` (a campaign member's).
    takes_status: bool = False


@dataclass(frozen=True)
class VerdictAction:
    """One action of a segment: do `do` (to `target`, with `status`) to the records of verdict `when`."""

    when: str
    do: str
    target: str | None = None  # the list or campaign id
    status: str | None = None

    @property
    def key(self) -> str:
        """What tells two actions apart in a sync's records: "opt_out", "add_to_list:<id>"."""
        return self.do if self.target is None else f"{self.do}:{self.target}"


class ActionTarget(NamedTuple):
    """A record an action is taken on, and the normalized value its verdict is for."""

    record_id: str
    object_type: str | None
    value: str


class ActionRunner(Protocol):
    """Takes one CRM's verdict actions, a batch of records at a time, under its rate limits."""

    # The most records one call of `run` takes (a REST batch, or one bulk job).
    batch_size: int

    def prepare(self, action: VerdictAction) -> None:
        """Check what the action needs exists (the list is static, the campaign is there); raises
        ConnectorError with a clear message otherwise."""
        ...

    def already_done(self, action: VerdictAction, targets: list[ActionTarget]) -> set[str]:
        """The record ids among `targets` the CRM shows the action already taken on (a member of the
        list, unsubscribed): asked only for records whose call may have been made before a crash."""
        ...

    def run(self, action: VerdictAction, targets: list[ActionTarget]) -> list[WriteFailure]:
        """Take the action on every target; return the records the CRM refused."""
        ...


class SegmentSource(Protocol):
    def iter_records(self) -> Iterator[SourceRecord]:
        """Every record of the segment, streamed (memory must not grow with the segment)."""
        ...


class RecordReader(Protocol):
    def read_records(self, record_ids: list[str], type_: str) -> Iterator[SourceRecord]:
        """The current value (email or phone) of these records; unknown ids are left out."""
        ...

    def fates(self, failures: list[WriteFailure], type_: str) -> list[RecordFate]:
        """What became of the refused records whose refusal says they may be gone (not found,
        deleted, merged, converted), asked of the CRM: a record it shows deleted or archived, or
        now another record (with that record's current `type_` value). Records the CRM still has
        as they were, and refusals of another kind, are left out: they stay write failures."""
        ...


class FlagWriter(Protocol):
    # The most updates one call of `write` takes (a REST batch, or one bulk import/ingest job).
    batch_size: int

    def prepare(self) -> None:
        """Check or create what the write needs (fields, properties) before any credit is spent."""
        ...

    def write(self, updates: Iterable[FlagUpdate]) -> list[WriteFailure]:
        """Write the flags (consuming `updates` once, lazily); return the records the CRM refused."""
        ...


# How a CRM client waits between retries and polls: a step passes StepContext.sleep to keep its lease.
Sleep = Callable[[float], None]


class TokenSource(Protocol):
    """The access token of an OAuth connection, kept fresh (crm/tokens.py keeps them in the database)."""

    def access_token(self) -> str:
        """A token that stays valid for a while yet: refreshed first when it is about to expire."""
        ...

    def refresh(self, refused: str) -> str:
        """A new token after the CRM refused `refused` (401): refreshed once across all workers, or
        the one another worker just got. Raises TransientError (the sync pauses) when the CRM
        refuses the refresh token: the connection then needs a new install."""
        ...


@dataclass(frozen=True)
class Account:
    """The CRM account (portal, org) a sync reads and writes, and how to authenticate to it."""

    connection_id: int | None = None
    external_id: str | None = None  # portal id, org id
    tokens: TokenSource | None = None  # None: the environment's credentials (the env connection)
    instance_url: str | None = None  # where an OAuth-installed account lives, when the CRM says


ENV_ACCOUNT = Account()


@dataclass(frozen=True)
class CrmContext:
    """What a CRM's sources, readers and writers are built from, for one sync."""

    settings: Settings
    redis: Redis
    sleep: Sleep
    work_dir: Path  # the sync's own folder: bulk exports and imports are kept there
    field_names: dict[str, str] | None = None  # the connection's renamed flag fields, if any
    account: Account = ENV_ACCOUNT


@dataclass(frozen=True)
class OAuthGrant:
    """What a CRM's token endpoint answered to a code exchange or a refresh."""

    access_token: str
    refresh_token: str | None  # None on a refresh that keeps the previous one
    expires_at: float | None  # epoch seconds; None: the CRM does not say (a session that lasts until idle)
    account_id: str  # portal id / org id, learnt from the CRM (never from the browser); "" on refresh
    account_name: str | None = None
    instance_url: str | None = None


class RefreshRefused(ConnectorError):
    """The CRM refused a refresh token (revoked, app uninstalled): the connection needs a new install."""


@dataclass(frozen=True)
class OAuthApp:
    """How a CRM is installed by OAuth and its tokens kept fresh (crm/<name>/oauth.py).

    Every call raises ConnectorError with a clear message (never a token) when the CRM refuses,
    RefreshRefused for a refused refresh token, TransientError when the CRM did not answer.
    """

    # Why installs are off (the unset variables), or None when the app is configured.
    missing: Callable[[Settings], str | None]
    # (settings, redirect URI, state, PKCE code challenge or None) → the CRM's consent page URL.
    authorize_url: Callable[[Settings, str, str, str | None], str]
    pkce: bool
    # (settings, code, redirect URI, PKCE verifier or None) → the grant, its account learnt from the CRM.
    exchange_code: Callable[[Settings, str, str, str | None], OAuthGrant]
    # (settings, refresh token) → a new access token.
    refresh: Callable[[Settings, str], OAuthGrant]
    # (settings, refresh token): revoke it at the CRM (disconnect).
    revoke: Callable[[Settings, str], None]


@dataclass(frozen=True)
class SegmentKind:
    """One kind of segment a CRM can read whole (a list, a campaign, a query)."""

    name: str  # the `kind` of segments and sync sources: "<crm>_list"
    ref_help: str  # what `ref` holds, for help texts: "list id"
    # The ref checked (raises InputError), and its canonical form: two refs naming the same
    # segment must give the same string, since one sync per segment is kept by it.
    check_ref: Callable[[str], str] = str.strip
    same_ref: Callable[[str], str] = str


class Lookup(Protocol):
    """Headers or query arguments: `get` by name (case-insensitive for headers), None when absent."""

    def get(self, key: str, /) -> str | None: ...


class AccountDirectory(Protocol):
    """The connections of one CRM, for routing a webhook delivery (pipeline/intake.py keeps it)."""

    def connection_of(self, account_id: str | None) -> int | None:
        """The id of the live connection of this portal/org (forms the CRM calls equal match);
        None when there is none, or it was disconnected. `None` as account: the env connection."""
        ...

    def connection_with_secret(self, secret: str) -> tuple[int, str] | None:
        """(connection id, account id) of the OAuth connection whose webhook secret this is."""
        ...

    def has_secrets(self) -> bool:
        """Whether a live connection has a webhook secret of its own: then a wrong secret is a 401,
        not a sign that webhooks were never configured (503)."""
        ...


@dataclass(frozen=True)
class WebhookRequest:
    """A webhook delivery as the web layer received it; `url` is the public URL it was sent to."""

    method: str
    url: str
    mimetype: str
    body: bytes
    headers: Lookup
    args: Lookup
    now_ms: int
    accounts: AccountDirectory


@dataclass(frozen=True)
class SegmentTrigger:
    """A delivery asking for a whole segment to be verified."""

    source: Mapping[str, str | None]  # the sync's source: {"kind": ..., "ref": ..., ...}
    type: str
    name: str


ContactsByType = list[tuple[str, IncomingContact]]


@dataclass
class WebhookDelivery:
    """What an authenticated delivery brought for one connection, and how to answer it."""

    connection_id: int
    # (dedupe key, contacts it brought): a redelivery under a key already seen adds nothing.
    keyed: list[tuple[str, ContactsByType]] = field(default_factory=list)
    unkeyed: ContactsByType = field(default_factory=list)
    segment: SegmentTrigger | None = None
    # The answer's body and media type for `accepted` new items; None: JSON {"accepted": n}.
    answer: Callable[[int], tuple[str, str]] | None = None


@dataclass(frozen=True)
class Crm:
    """Everything the rest of the connector knows of one CRM (registered in crm/registry.py)."""

    name: str  # the `crm` of connections, segments and syncs, and the webhook path /webhooks/<name>
    label: str  # the CRM's name for people, as its maker spells it
    # Its environment variables (a frozen dataclass read with `Settings.section`).
    settings: type
    # The account the environment configures (portal id, org id); None when not set.
    account_id: Callable[[Settings], str | None]
    segment_kinds: tuple[SegmentKind, ...]
    # The segment's object checked (raises InputError): None where the CRM has one kind of record.
    check_object: Callable[[object], str | None]
    # The record types its contacts come in, for writers that must know ("Contact", "Lead").
    objects: tuple[str, ...]
    segment_source: Callable[[CrmContext, Mapping[str, Any], str], SegmentSource]
    record_reader: Callable[[CrmContext], RecordReader]
    # (context, type, expected updates, objects written) → writer; bulk above settings.crm_bulk_threshold.
    flag_writer: Callable[[CrmContext, str, int, tuple[str, ...]], FlagWriter]
    # Authenticates and reads a delivery to /webhooks/<name>, one WebhookDelivery per connection it
    # concerns (raises WebhookRefused — 403 for an account without a connection — InputError or
    # ConfigError, and then nothing is stored); None: the CRM sends no webhooks.
    read_webhook: Callable[[Settings, WebhookRequest], list[WebhookDelivery]] | None = None
    # The OpenAPI operation of its webhook path (its 200 answer included), and the error statuses
    # it may answer with (each documented with the common error body).
    webhook_openapi: Mapping[str, Any] = field(default_factory=dict)
    webhook_errors: tuple[int, ...] = (400, 401, 403, 413, 503)
    # A value a delivery claims is a hint (anyone with the token could send it, and redeliveries
    # arrive out of order): read each buffered record's current value by id before verifying.
    read_back_buffered: bool = False
    # Installs by OAuth (GET /admin/connect/<name>); None: env credentials only.
    oauth: OAuthApp | None = None
    # An account id in the form two spellings of one account share (e.g. 15 of 18 characters).
    same_account: Callable[[str], str] = str
    # Deliveries are routed by the connection's own webhook secret (made at install, shown once);
    # False: by an account id the delivery carries, under one app-wide signature.
    routes_by_secret: bool = False
    # The env connection has credentials (a token or client credentials) in the environment.
    env_configured: Callable[[Settings], bool] = lambda settings: False
    # The verdict actions it can take (a segment's `actions`), and the factory of their runner:
    # (context, type, records expected) → runner, in bulk above settings.crm_bulk_threshold.
    actions: tuple[ActionKind, ...] = ()
    action_runner: Callable[[CrmContext, str, int], ActionRunner] | None = None
