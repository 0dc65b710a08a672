"""Worker time shared between connections: how many step jobs of one connection may run at once.

A sync runs one step job at a time (connector.pipeline.runner), so one sync holds at most one
worker, however large. What can still keep a small sync of connection B waiting for a worker is
*several* syncs of another connection A: each one holds a worker for a whole step (a million-
contact export, fetch or write-back step runs 60-75 s), so A's list segments, a schedule that
starts many of them, or A's own webhook syncs can occupy every worker, and B's step job waits
behind steps that last minutes. A queue per connection served round-robin would only reorder the
queue: B's job would be first in line and still wait for a worker to come free.

So a step job first takes its connection's share of the workers, in the transaction that claims
the sync's lease (the leases are the count of running steps: a crashed worker's lease expires,
and its share with it):

    share = max(1, (W - spare) // live)

- W: the workers serving the queue now (RQ's registry of live workers);
- live: the connections with a sync whose next step is queued, scheduled or running (not paused);
- spare: 1 when some other connection could start a sync (a connected one with none live) and
  there are at least two workers, else 0 — the worker it keeps free is what a connection that
  starts a sync finds at once.

The shares of the live connections add up to at most W - spare, so each of them always finds a
worker for its next step, and so does a newcomer. A deployment with a single connection (the
env-configured setup) has live = 1 and spare = 0: its syncs use every worker, as before. A step
over its connection's share hands the sync to a new job `DEFER_SECONDS` later and returns at
once; it never holds a worker while it waits. File syncs (`connector verify`) run on their own
CLI worker and are not counted.

The connection's running steps are counted under a PostgreSQL advisory lock per connection, so
two workers cannot both take its last slot (SQLite serializes writers anyway).

Measured (benchmarks/fairness.py, 2 workers on 2 cores, COALESCE_WINDOW_SECONDS=5; connection B
gets 10 rounds of 10 single-contact webhooks while connection A syncs 1,000,000 contacts):

- A as one sync: the chain alone bounds A to one worker, and the share never binds. B's syncs
  took 6.1 s median / 7.0 s worst from their creation to their last flag during A's sync
  (6.1 / 6.3 s with A idle: the 5 s are the documented first parse poll); A's wall 208.1 s alone,
  210.5 s with B (+1.2 %). What else waits in the queue ahead of B's steps: A's one next step,
  the cron sweeps and flushes (milliseconds each), and the scheduler's 1 s tick for delayed jobs.
- A as two syncs of 500,000 at once: without the share both workers ran A's 25-75 s steps, and
  B's syncs took up to 75.2 s from creation to flag (its contacts up to 80.3 s from their
  webhook); with it, 6.3 s median / 7.5 s worst (15.2 s from the webhook). The price is A's:
  its two syncs share one worker, 195.6 s against 118.6 s with both workers. With W workers a
  connection gives up one of them while another connection exists, so the price shrinks as
  workers are added; a deployment of one connection pays nothing.
"""

from __future__ import annotations

import random
from datetime import datetime

import redis
from rq.worker_registration import get_keys
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from connector.models import Connection, Sync
from connector.runtime import Runtime
from connector.states import RUNNABLE_VALUES

# A step over its connection's share tries again this much later (jittered, so that several
# waiting syncs do not all come back at once).
DEFER_SECONDS = 2.0
# The syncs of this CRM kind are driven by the CLI on a queue and worker of their own.
LOCAL_CRM = "file"
# pg_advisory_xact_lock(namespace, connection id): the namespace keeps these locks apart.
_LOCK_NAMESPACE = 0x5354  # "ST"(ep)


def defer_delay() -> float:
    return random.uniform(0.75, 1.25) * DEFER_SECONDS


def live_workers(runtime: Runtime) -> int:
    """Workers registered on the queue whose heartbeat key still exists (at least 1: this one)."""
    try:
        keys = sorted(get_keys(runtime.queue()))
        if not keys:
            return 1
        with runtime.redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.exists(key)
            alive = sum(1 for found in pipe.execute() if found)
    except redis.exceptions.RedisError:
        return 1
    return max(alive, 1)


def share(workers: int, live: int, spare: int) -> int:
    """Steps one connection may run at once (see the module's docstring)."""
    return max(1, (workers - spare) // max(live, 1))


def has_room(session: Session, connection_id: int, workers: int, now: datetime) -> bool:
    """Whether a step of `connection_id` may start now, inside the transaction that claims it."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(
            text("SELECT pg_advisory_xact_lock(:namespace, :connection)"),
            {"namespace": _LOCK_NAMESPACE, "connection": connection_id},
        )
    running = session.scalar(
        select(func.count()).where(Sync.connection_id == connection_id, Sync.lease_until > now)
    )
    live_syncs = (
        select(Sync.connection_id)
        .where(
            Sync.status.in_(RUNNABLE_VALUES),
            Sync.job_id.is_not(None),
            Sync.crm != LOCAL_CRM,
            (Sync.paused_until.is_(None)) | (Sync.paused_until <= now),
        )
        .distinct()
    )
    live_ids = set(session.scalars(live_syncs)) | {connection_id}
    spare = 0
    if workers >= 2:
        idle = session.scalar(
            select(Connection.id)
            .where(
                Connection.crm != LOCAL_CRM,
                Connection.status == "connected",
                Connection.id.not_in(live_ids),
            )
            .limit(1)
        )
        spare = 1 if idle is not None else 0
    return (running or 0) < share(workers, len(live_ids), spare)
