"""What a step returns and what it may touch: the vocabulary shared by steps and the runner."""

from __future__ import annotations

import time
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import update
from sqlalchemy.orm import Session

from connector.db import affected_rows
from connector.models import Sync, SyncStatus, SyncTransition, utcnow
from connector.runtime import Runtime


@dataclass(frozen=True)
class Advance:
    """The step is done: move to `to` and run its step now."""

    to: SyncStatus
    note: str | None = None


@dataclass(frozen=True)
class Wait:
    """Nothing to do yet (a poll): run the same step again after a backoff delay."""


@dataclass(frozen=True)
class Halt:
    """Stop the chain in state `to` until an operator acts (approval)."""

    to: SyncStatus
    note: str | None = None


StepResult = Advance | Wait | Halt


class StepAborted(Exception):
    """The sync was cancelled or taken over by another job while this step ran."""


class StepContext:
    def __init__(self, runtime: Runtime, sync_id: int, job_id: str) -> None:
        self.runtime = runtime
        self.sync_id = sync_id
        self.job_id = job_id

    def session(self) -> AbstractContextManager[Session]:
        return self.runtime.session()

    def load(self, session: Session) -> Sync:
        """The sync this step works on, read in `session`."""
        return session.get_one(Sync, self.sync_id)

    def heartbeat(self, waiting: float = 0.0) -> None:
        """Extend the lease (past a wait about to start); abort if the sync was cancelled or taken over."""
        with self.runtime.session() as session:
            self.renew_lease(session, waiting)

    def renew_lease(self, session: Session, waiting: float = 0.0) -> None:
        """The heartbeat inside `session`: the sync's row stays locked, so ours, until it commits.

        Writes that must not happen once the step was replaced go in the same transaction.
        """
        lease = utcnow() + timedelta(seconds=waiting + self.runtime.settings.step_lease_seconds)
        ours = update(Sync).where(Sync.id == self.sync_id, Sync.job_id == self.job_id)
        kept = affected_rows(session.execute(ours.values(lease_until=lease)))
        if not kept:
            raise StepAborted(f"sync {self.sync_id} no longer belongs to job {self.job_id}")

    def sleep(self, seconds: float) -> None:
        """Wait inside the step (a retry's backoff, a rate limit, a CRM job's poll), lease renewed first.

        Clients retry and poll in-process; an outage that kept them at it past the lease would let
        the reconciler start a second job on this sync. Renewing also notices a cancel or a
        take-over, which ends the step rather than letting it retry on.
        """
        self.heartbeat(waiting=seconds)
        time.sleep(seconds)


def transition(session: Session, sync: Sync, to: SyncStatus, note: str | None = None) -> None:
    """Change state and record it in the sync's history."""
    session.add(SyncTransition(sync_id=sync.id, from_status=sync.status, to_status=to, note=note))
    sync.status = to
    sync.updated_at = utcnow()
    if to == SyncStatus.COMPLETED:
        sync.completed_at = sync.updated_at
