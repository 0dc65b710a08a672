"""The states of a sync, in the order a sync passes through them, and what each one means.

`PIPELINE` is the one declaration of them; every collection of states used elsewhere is derived
from it here:

- `RUNNABLE_STATES`: a step job moves the sync on (connector.pipeline.steps.STEPS maps each to
  its function and fails at import when the two disagree);
- `UNSETTLED_STATES`: the sync still holds its source, so another request for that source is
  answered with it (the partial unique index `uq_syncs_unsettled_source`): the runnable states
  and those waiting for an operator;
- `ENDED_STATES`: the others; no job will move the sync again unless an operator retries it, and
  its data is purged after the retention period;
- `TERMINAL_STATES`: the sync can be neither cancelled nor resumed (a completed sync's refused
  writes can still be written again: connector.pipeline.syncs.retry_sync);
- `RESULT_STATES`: its verdicts can be downloaded;
- `PROGRESS_ORDER`: the steps the terminal's progress view lists, in order;
- `COUNTING_STATES`: the steps whose end recomputes the sync's counts.

The `*_VALUES` are sets as sorted tuples of strings, ready for SQL `IN (...)`. A state added to
`SyncStatus` but not to `PIPELINE` (or declared twice, or out of order) stops the import.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass


class SyncStatus(enum.StrEnum):
    PENDING = "pending"
    EXPORTING = "exporting"
    UPLOADING = "uploading"
    CONFIGURING = "configuring"
    PARSING = "parsing"
    READY = "ready"
    AWAITING_APPROVAL = "awaiting_approval"
    LAUNCHING = "launching"
    VERIFYING = "verifying"
    FETCHING_RESULTS = "fetching_results"
    WRITING_BACK = "writing_back"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class State:
    """One state of `PIPELINE` and its properties (a state with none of `step`/`waits` has ended)."""

    status: SyncStatus
    # A step job exists for the sync: connector.pipeline.steps.STEPS runs it.
    step: bool = False
    # No job runs, yet the sync holds its source until an operator acts (approves or cancels).
    waits: bool = False
    # Ended for good: cannot be cancelled or resumed (only a completed sync's refused writes retried).
    terminal: bool = False
    # Its verdicts can be downloaded (admin API, ops page).
    results: bool = False
    # Listed, in this order, by the terminal's progress view (connector.progress).
    progress: bool = False
    # Its step adds or changes contact and value rows: the sync's counts are recomputed as it
    # ends. Counting a 1,000,000-contact sync reads its rows (0.8 s of PostgreSQL CPU), so the
    # steps that only talk to ApexVerify do not.
    counts: bool = False

    @property
    def unsettled(self) -> bool:
        return self.step or self.waits


PIPELINE: tuple[State, ...] = (
    State(SyncStatus.PENDING, step=True, counts=True),
    State(SyncStatus.EXPORTING, step=True, progress=True, counts=True),
    State(SyncStatus.UPLOADING, step=True, progress=True),
    State(SyncStatus.CONFIGURING, step=True, progress=True),
    State(SyncStatus.PARSING, step=True, progress=True),
    State(SyncStatus.READY, step=True, progress=True),
    State(SyncStatus.AWAITING_APPROVAL, waits=True),
    State(SyncStatus.LAUNCHING, step=True, progress=True),
    State(SyncStatus.VERIFYING, step=True, progress=True),
    State(SyncStatus.FETCHING_RESULTS, step=True, progress=True, counts=True),
    State(SyncStatus.WRITING_BACK, step=True, results=True, progress=True, counts=True),
    State(SyncStatus.COMPLETED, terminal=True, results=True, progress=True),
    State(SyncStatus.FAILED),
    State(SyncStatus.CANCELLED, terminal=True),
)


def check_declaration(pipeline: Sequence[State]) -> None:
    """Raise unless `pipeline` declares every SyncStatus once, in the enum's order, consistently."""
    declared = [state.status for state in pipeline]
    if declared != list(SyncStatus):
        missing = [s.value for s in SyncStatus if s not in declared]
        raise RuntimeError(
            "the sync states declared in PIPELINE must be SyncStatus's, each once and in its order;"
            f" declared {[s.value for s in declared]}, missing {missing}"
        )
    for state in pipeline:
        if state.step and state.waits:
            raise RuntimeError(f"sync state {state.status} cannot both run a step and wait for an operator")
        if state.terminal and state.unsettled:
            raise RuntimeError(f"sync state {state.status} cannot be terminal and still hold its source")


def check_steps(steps: Collection[SyncStatus]) -> None:
    """Raise unless `steps` (the states that have a step function) are exactly the runnable states."""
    if set(steps) != RUNNABLE_STATES:
        missing = sorted(RUNNABLE_STATES - set(steps))
        extra = sorted(set(steps) - RUNNABLE_STATES)
        raise RuntimeError(
            f"step functions must match the runnable states of PIPELINE: no function for {missing},"
            f" functions for states that are not runnable {extra}"
        )


def _values(states: Iterable[SyncStatus]) -> tuple[str, ...]:
    return tuple(sorted(str(s) for s in states))


check_declaration(PIPELINE)

RUNNABLE_STATES = frozenset(state.status for state in PIPELINE if state.step)
UNSETTLED_STATES = frozenset(state.status for state in PIPELINE if state.unsettled)
ENDED_STATES = frozenset(state.status for state in PIPELINE if not state.unsettled)
TERMINAL_STATES = frozenset(state.status for state in PIPELINE if state.terminal)
RESULT_STATES = frozenset(state.status for state in PIPELINE if state.results)
PROGRESS_ORDER = tuple(state.status for state in PIPELINE if state.progress)
COUNTING_STATES = frozenset(state.status for state in PIPELINE if state.counts)

RUNNABLE_VALUES = _values(RUNNABLE_STATES)
UNSETTLED_VALUES = _values(UNSETTLED_STATES)
ENDED_VALUES = _values(ENDED_STATES)
