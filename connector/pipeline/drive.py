"""Running the job chain inside this process (CLI and demo) with an RQ worker in burst mode.

The jobs are the same RQ jobs a `worker` process runs; driving them here just means the CLI
works without a separate worker, and an in-process broker works when no Redis is around.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from rq.worker import SimpleWorker

from connector.models import Sync, SyncStatus
from connector.pipeline.reconcile import reconcile
from connector.runtime import Runtime, set_runtime

SETTLED = frozenset(
    {SyncStatus.COMPLETED, SyncStatus.FAILED, SyncStatus.CANCELLED, SyncStatus.AWAITING_APPROVAL}
)


def drive_until_settled(
    runtime: Runtime,
    sync_id: int,
    *,
    on_tick: Callable[[Sync], None] | None = None,
    tick_seconds: float = 0.25,
    reconcile_every: float = 10.0,
) -> Sync:
    """Work the queue until the sync completes, fails, is cancelled or waits for approval."""
    set_runtime(runtime)
    worker = SimpleWorker([runtime.queue()], connection=runtime.redis)
    last_reconcile = time.monotonic()
    while True:
        worker.work(burst=True, with_scheduler=True, logging_level="WARNING")
        with runtime.session() as session:
            sync = session.get_one(Sync, sync_id)
            session.expunge(sync)
        if on_tick is not None:
            on_tick(sync)
        if SyncStatus(sync.status) in SETTLED:
            return sync
        if time.monotonic() - last_reconcile > reconcile_every:
            reconcile(runtime)
            last_reconcile = time.monotonic()
        time.sleep(tick_seconds)
