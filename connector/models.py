"""Database models: the durable state of every sync. The database, not Redis, is the truth."""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from connector.states import UNSETTLED_VALUES, SyncStatus


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite drops the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# BIGINT ids in PostgreSQL, INTEGER (rowid alias, autoincrement) in SQLite.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSON}
    # Every model here maps a Table (none maps a join or a select), so its statements can be built on it.
    __table__: ClassVar[Table]


# The sync states and the sets derived from them are declared in connector.states.
_UNSETTLED = text("status IN ({})".format(", ".join(f"'{s}'" for s in UNSETTLED_VALUES)))


class ContactOutcome(enum.StrEnum):
    PENDING = "pending"
    VERIFIED = "verified"
    SKIPPED = "skipped"
    WRITE_FAILED = "write_failed"


class Connection(Base):
    """One CRM account (a portal, an org) or the local file source.

    An `env` connection's credentials stay in the environment; an `oauth` one's tokens are kept
    here, encrypted with CONNECTOR_SECRET_KEY (connector/secretbox.py), and its webhook secret
    only as a SHA-256 digest (deliveries are routed by it; the secret is shown once, at install).
    """

    __tablename__ = "connections"
    __table_args__ = (
        UniqueConstraint("crm", "external_id", name="uq_connections_crm_external_id"),
        UniqueConstraint("webhook_secret_digest", name="uq_connections_webhook_secret_digest"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    crm: Mapped[str] = mapped_column(String(20))
    external_id: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(255))
    # Per-connection choices: {"default_country": "US", "field_names": {...}, "parameters": {...}}
    # and, for an OAuth account whose CRM says so, where it lives: {"instance_url": ...}.
    settings: Mapped[dict[str, Any]] = mapped_column(default=dict)
    auth: Mapped[str] = mapped_column(String(10), default="env", server_default="env")
    status: Mapped[str] = mapped_column(String(20), default="connected", server_default="connected")
    last_error: Mapped[str | None] = mapped_column(Text)
    # Fernet token of {"access_token", "refresh_token", "expires_at"}; null for env connections
    # and once disconnected.
    credentials: Mapped[str | None] = mapped_column(Text)
    webhook_secret_digest: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Segment(Base):
    __tablename__ = "segments"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    connection_id: Mapped[int] = mapped_column(ForeignKey("connections.id"))
    name: Mapped[str | None] = mapped_column(String(255))
    crm: Mapped[str] = mapped_column(String(20))
    kind: Mapped[str] = mapped_column(String(40))
    ref: Mapped[str] = mapped_column(Text)
    object: Mapped[str | None] = mapped_column(String(20))
    type: Mapped[str] = mapped_column(String(10))
    parameters: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # Null: the connection's default country.
    target_country: Mapped[str | None] = mapped_column(String(2))
    schedule: Mapped[str | None] = mapped_column(String(120))
    reverify_after_days: Mapped[int] = mapped_column(Integer, default=30)
    max_net_cost: Mapped[float | None] = mapped_column(Float)
    # Verdict actions, as the contract spells them: [{"when": "wrong", "do": "opt_out"}, ...].
    actions: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list, server_default="[]")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    deleted_at: Mapped[datetime | None]


class Sync(Base):
    __tablename__ = "syncs"
    __table_args__ = (
        Index("ix_syncs_status_id", "status", "id"),
        Index("ix_syncs_segment_id", "segment_id"),
        # One unsettled sync per source: concurrent triggers of one list race on this index.
        Index("uq_syncs_unsettled_source", "source_key", unique=True,
              postgresql_where=_UNSETTLED, sqlite_where=_UNSETTLED),
    )  # fmt: skip

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    connection_id: Mapped[int] = mapped_column(ForeignKey("connections.id"))
    segment_id: Mapped[int | None] = mapped_column(ForeignKey("segments.id"))
    trigger: Mapped[str] = mapped_column(String(20))
    crm: Mapped[str] = mapped_column(String(20))
    type: Mapped[str] = mapped_column(String(10))
    target_country: Mapped[str] = mapped_column(String(2))
    parameters: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # Where the contacts come from: {"kind": "file", "path": ...}, {"kind": "<crm>_list", "ref": ...}
    source: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # The CRM segment read, normalised (connector.pipeline.syncs.source_key); null for files and
    # coalesced webhook contacts, which no other sync shares.
    source_key: Mapped[str | None] = mapped_column(String(200))
    name: Mapped[str] = mapped_column(String(255))
    reverify_after_days: Mapped[int] = mapped_column(Integer, default=30)
    max_net_cost: Mapped[float | None] = mapped_column(Float)
    idempotency_key: Mapped[str | None] = mapped_column(String(200), unique=True)

    status: Mapped[str] = mapped_column(String(20), default=SyncStatus.PENDING)
    failed_step: Mapped[str | None] = mapped_column(String(20))
    error_code: Mapped[str | None] = mapped_column(String(60))
    error_message: Mapped[str | None] = mapped_column(Text)
    counts: Mapped[dict[str, Any]] = mapped_column(default=dict)
    cost: Mapped[dict[str, Any]] = mapped_column(default=dict)
    approved_at: Mapped[datetime | None]
    # The segment's verdict actions when the sync was made (a later edit does not change a running sync).
    actions: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list, server_default="[]")
    # Asked as a plan: stops in awaiting_approval before launch whatever the cost, carrying `plan`.
    plan_requested: Mapped[bool] = mapped_column(Boolean, default=False, server_default="false")
    plan: Mapped[dict[str, Any] | None]
    # Why a runnable sync is waiting (rate limit, outage) and until when; shown to operators.
    pause_reason: Mapped[str | None] = mapped_column(Text)
    paused_until: Mapped[datetime | None]
    poll_attempt: Mapped[int] = mapped_column(Integer, default=0)
    # Pauses in a row without a step getting through: each doubles the next wait (an outage).
    pause_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # When the current run of pauses began (the sync_paused_long alert); null while not paused.
    paused_since: Mapped[datetime | None]

    # Job bookkeeping: only the job whose id is `job_id` may run a step, and only while it
    # holds the lease. The reconciler re-enqueues when the job is gone and the lease expired.
    job_id: Mapped[str | None] = mapped_column(String(80))
    lease_until: Mapped[datetime | None]

    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    completed_at: Mapped[datetime | None]
    # Contacts, values and files are deleted DATA_RETENTION_DAYS after a sync ends; counts stay.
    data_purged_at: Mapped[datetime | None]

    batches: Mapped[list[SyncBatch]] = relationship(
        back_populates="sync", order_by="SyncBatch.seq", cascade="all, delete-orphan"
    )
    history: Mapped[list[SyncTransition]] = relationship(
        order_by="SyncTransition.id", cascade="all, delete-orphan"
    )


class SyncTransition(Base):
    __tablename__ = "sync_transitions"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    sync_id: Mapped[int] = mapped_column(ForeignKey("syncs.id", ondelete="CASCADE"), index=True)
    from_status: Mapped[str | None] = mapped_column(String(20))
    to_status: Mapped[str] = mapped_column(String(20))
    at: Mapped[datetime] = mapped_column(default=utcnow)
    note: Mapped[str | None] = mapped_column(Text)


class SyncBatch(Base):
    """One ApexVerify batch of a sync. `batch_uuid` is committed as soon as the upload returns."""

    __tablename__ = "sync_batches"
    __table_args__ = (UniqueConstraint("sync_id", "seq", name="uq_sync_batches_sync_seq"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    sync_id: Mapped[int] = mapped_column(ForeignKey("syncs.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(Integer)
    rows: Mapped[int] = mapped_column(Integer, default=0)
    file_path: Mapped[str] = mapped_column(Text)
    batch_uuid: Mapped[str | None] = mapped_column(String(64))
    remote_status: Mapped[str | None] = mapped_column(String(40))
    configured: Mapped[bool] = mapped_column(Boolean, default=False)
    parse_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    found_content: Mapped[dict[str, Any] | None]
    found_cost: Mapped[dict[str, Any] | None]
    stats: Mapped[dict[str, Any] | None]
    launched_at: Mapped[datetime | None]
    # The last moment ApexVerify said the batch was still verifying; with done_at (when it was
    # first seen done) it brackets when verification really finished.
    seen_ongoing_at: Mapped[datetime | None]
    done_at: Mapped[datetime | None]
    results_fetched_at: Mapped[datetime | None]
    # Set when ApexVerify broke the batch after launch and its values moved to a new batch.
    abandoned_at: Mapped[datetime | None]

    sync: Mapped[Sync] = relationship(back_populates="batches")


# No foreign keys on the per-contact tables: sync_contacts, sync_values and record_verifications
# carry their sync's (or connection's) id without one. PostgreSQL checks a foreign key by a query
# per inserted row, which for 962,643 value rows took 6.1 of the INSERT's 17 s, and as much again
# for the contacts and the record digests. Their rows are written only by a step that holds its
# sync's lease, and syncs and connections are never deleted (retention purges a sync's rows and
# keeps the sync: connector.pipeline.retention).


class SyncValue(Base):
    """A distinct normalized value of a sync and its verdict (from ApexVerify or the cache).

    A sync's values are inserted once, by one INSERT ... SELECT ... GROUP BY value
    (connector.pipeline.batchfiles.collect_values), which is what keeps them distinct; they are
    found by (sync_id, batch_seq) and meet contacts and verdicts in hash joins, so no index is
    kept on the text. In PostgreSQL its pages are filled half (fillfactor 50), so storing a
    verdict is a HOT update: no index entry written (migration a1c0ffee0015 has the figures).
    """

    __tablename__ = "sync_values"
    __table_args__ = (Index("ix_sync_values_sync_batch", "sync_id", "batch_seq"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    sync_id: Mapped[int] = mapped_column(BigId)  # no foreign key: see the note above SyncValue
    value: Mapped[str] = mapped_column(String(320))
    batch_seq: Mapped[int | None] = mapped_column(Integer)
    status: Mapped[str | None] = mapped_column(String(20))
    valid: Mapped[bool | None]
    wrong: Mapped[bool | None]
    unknown: Mapped[bool | None]
    is_role: Mapped[bool | None]
    is_disposable: Mapped[bool | None]
    verified_at: Mapped[datetime | None]
    from_cache: Mapped[bool] = mapped_column(Boolean, default=False)


class SyncContact(Base):
    """One CRM record (or input line) of a sync, and what became of it.

    Its one index beside the key is (sync_id, id): no column that write-back changes is indexed,
    and in PostgreSQL its pages are filled half (fillfactor 50), so marking a contact written is
    a HOT update that writes no index entry (migration a1c0ffee0015 has the figures).
    """

    __tablename__ = "sync_contacts"
    __table_args__ = (Index("ix_sync_contacts_sync_id", "sync_id", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    sync_id: Mapped[int] = mapped_column(BigId)  # no foreign key: see the note above SyncValue
    record_id: Mapped[str] = mapped_column(String(64))
    object_type: Mapped[str | None] = mapped_column(String(20))
    value: Mapped[str | None] = mapped_column(String(320))
    outcome: Mapped[str] = mapped_column(String(20), default=ContactOutcome.PENDING)
    reason: Mapped[str | None] = mapped_column(String(60))
    error_message: Mapped[str | None] = mapped_column(Text)
    # The record the flags went onto when it is not `record_id`: the contact a contact was merged
    # into, the contact a lead was converted to (reason says which).
    written_to: Mapped[str | None] = mapped_column(String(64))


class SyncAction(Base):
    """One verdict action due on one contact of a sync, and what became of it (connector.pipeline.actions).

    Rows are made for every contact whose flags were written and whose verdict the action is for,
    once (the unique key); a row is `attempted` in a commit before its CRM call and `done` or
    `failed` after, so a step resumed after a crash asks the CRM about attempted rows instead of
    acting twice.
    """

    __tablename__ = "sync_actions"
    __table_args__ = (
        UniqueConstraint("sync_id", "action", "contact_id", name="uq_sync_actions_sync_action_contact"),
        Index("ix_sync_actions_sync_id", "sync_id", "id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    sync_id: Mapped[int] = mapped_column(BigId)  # no foreign key: see the note above SyncValue
    contact_id: Mapped[int] = mapped_column(BigId)
    action: Mapped[str] = mapped_column(String(120))  # VerdictAction.key
    do: Mapped[str] = mapped_column(String(30))
    outcome: Mapped[str] = mapped_column(String(20), default="pending")  # pending|attempted|done|failed
    error_message: Mapped[str | None] = mapped_column(Text)


class Alert(Base):
    """An alert raised once per subject and kind (a sync, a connection's loss of access), and its
    delivery to each configured target (connector.alerts)."""

    __tablename__ = "alerts"
    __table_args__ = (UniqueConstraint("kind", "subject", name="uq_alerts_kind_subject"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    kind: Mapped[str] = mapped_column(String(40))
    # What it is about, once: "sync:<id>", or "connection:<id>:<when access was lost>".
    subject: Mapped[str] = mapped_column(String(120))
    sync_id: Mapped[int | None] = mapped_column(BigId)
    connection_id: Mapped[int | None] = mapped_column(BigId)
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)  # the body sent
    # Per target ("webhook", "slack", "email"): {"state": pending|sent|failed, "attempts": n, "error": ...}
    deliveries: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    next_attempt_at: Mapped[datetime | None] = mapped_column(index=True)
    delivered_at: Mapped[datetime | None]


class VerifiedValue(Base):
    """The latest verdict per (type, value), so recently verified values spend no credits."""

    __tablename__ = "verified_values"

    type: Mapped[str] = mapped_column(String(10), primary_key=True)
    value: Mapped[str] = mapped_column(String(320), primary_key=True)
    status: Mapped[str] = mapped_column(String(20))
    valid: Mapped[bool] = mapped_column(Boolean)
    wrong: Mapped[bool] = mapped_column(Boolean)
    unknown: Mapped[bool] = mapped_column(Boolean)
    is_role: Mapped[bool | None]
    is_disposable: Mapped[bool | None]
    verified_at: Mapped[datetime] = mapped_column(index=True)


class WebhookEvent(Base):
    """A received webhook delivery, kept for de-duplication and durable acknowledgement."""

    __tablename__ = "webhook_events"
    __table_args__ = (UniqueConstraint("source", "dedupe_key", name="uq_webhook_events_source_key"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    source: Mapped[str] = mapped_column(String(20))
    dedupe_key: Mapped[str] = mapped_column(String(200))
    # Indexed for the hourly purge: a key is kept for the CRMs' redelivery window, then deleted.
    received_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class CoalescedContact(Base):
    """A contact that arrived alone (webhook) and waits to join others in one sync.

    While `sync_id` is null it sits in the buffer of its connection and type; the flush that
    turns the buffer into a sync sets `sync_id` in the same transaction that creates the sync.
    """

    __tablename__ = "coalesced_contacts"
    __table_args__ = (
        Index("ix_coalesced_contacts_buffer", "connection_id", "type", "sync_id", "id"),
        Index(
            "uq_coalesced_contacts_waiting",
            "connection_id",
            "type",
            "object_type",
            "record_id",
            unique=True,
            postgresql_where=text("sync_id IS NULL"),
            sqlite_where=text("sync_id IS NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    connection_id: Mapped[int] = mapped_column(ForeignKey("connections.id"))
    type: Mapped[str] = mapped_column(String(10))
    record_id: Mapped[str] = mapped_column(String(64))
    object_type: Mapped[str] = mapped_column(String(20), default="")
    # Null when the webhook did not carry the value: the source reads it from the CRM.
    value: Mapped[str | None] = mapped_column(Text)
    # When the value was observed: the CRM's event time, if it sends one, else its arrival here.
    # The buffer keeps the newest value whatever order deliveries arrive in. Null only for rows
    # buffered before this column existed (they count as received_at).
    occurred_at: Mapped[datetime | None]
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    sync_id: Mapped[int | None] = mapped_column(ForeignKey("syncs.id", ondelete="SET NULL"))


class RecordVerification(Base):
    """For which value the connector last wrote flags onto a CRM record (a keyed hash of it, not the value).

    A CRM's own "verified at" field says when a record was flagged, not for which value: a record
    whose email changed since then must be verified again however recent its flags are.
    `value_digest` is HMAC-SHA256 under the server's record hash key (64 hex characters), or an
    MD5 (32) written before that key existed (connector.pipeline.record_history).
    """

    __tablename__ = "record_verifications"

    # No foreign key: see the note above SyncValue.
    connection_id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=False)
    type: Mapped[str] = mapped_column(String(10), primary_key=True)
    record_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    value_digest: Mapped[str] = mapped_column(String(64))
    written_at: Mapped[datetime] = mapped_column(default=utcnow)


class ServerSecret(Base):
    """A secret the server made for itself: random, created once, shared by every process, never changed."""

    __tablename__ = "server_secrets"

    name: Mapped[str] = mapped_column(String(60), primary_key=True)
    value: Mapped[str] = mapped_column(Text)
