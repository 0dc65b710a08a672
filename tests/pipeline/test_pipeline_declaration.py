"""The sync states are declared once (connector.states.PIPELINE); everything else derives from it."""

from __future__ import annotations

import dataclasses

import pytest
from rq.utils import import_attribute

from connector.models import Sync
from connector.pipeline.jobs import STEP_JOB
from connector.pipeline.runner import run_sync_step
from connector.pipeline.steps import STEPS
from connector.states import (
    ENDED_STATES,
    ENDED_VALUES,
    PIPELINE,
    PROGRESS_ORDER,
    RESULT_STATES,
    RUNNABLE_STATES,
    RUNNABLE_VALUES,
    TERMINAL_STATES,
    UNSETTLED_STATES,
    UNSETTLED_VALUES,
    SyncStatus,
    check_declaration,
    check_steps,
)

S = SyncStatus


def test_every_state_is_declared_once_in_the_enums_order():
    # Adding a member to SyncStatus without a line in PIPELINE fails here (and at import).
    assert [state.status for state in PIPELINE] == list(SyncStatus)


def test_a_declaration_missing_a_state_or_repeating_one_is_refused():
    with pytest.raises(RuntimeError, match="missing"):
        check_declaration(PIPELINE[:-1])
    with pytest.raises(RuntimeError):
        check_declaration((*PIPELINE, PIPELINE[0]))
    with pytest.raises(RuntimeError):
        check_declaration(tuple(reversed(PIPELINE)))
    inconsistent = [dataclasses.replace(PIPELINE[0], terminal=True), *PIPELINE[1:]]
    with pytest.raises(RuntimeError, match="terminal"):
        check_declaration(inconsistent)


def test_every_runnable_state_has_a_step_and_only_those():
    assert set(STEPS) == RUNNABLE_STATES
    check_steps(STEPS)
    with pytest.raises(RuntimeError, match="no function"):
        check_steps(set(STEPS) - {S.PARSING})
    with pytest.raises(RuntimeError, match="not runnable"):
        check_steps(set(STEPS) | {S.AWAITING_APPROVAL})


def test_derived_sets_are_the_ones_the_connector_always_used():
    runnable, unsettled, ended = set(RUNNABLE_STATES), set(UNSETTLED_STATES), set(ENDED_STATES)
    assert runnable == set(SyncStatus) - {S.AWAITING_APPROVAL, S.COMPLETED, S.FAILED, S.CANCELLED}
    assert unsettled == runnable | {S.AWAITING_APPROVAL}
    assert ended == {S.COMPLETED, S.FAILED, S.CANCELLED} == set(SyncStatus) - unsettled
    assert set(TERMINAL_STATES) == {S.COMPLETED, S.CANCELLED}
    assert TERMINAL_STATES <= ENDED_STATES
    assert set(RESULT_STATES) == {S.WRITING_BACK, S.COMPLETED}


def test_progress_order_follows_the_declaration():
    declared = [state.status for state in PIPELINE]
    assert list(PROGRESS_ORDER) == [s for s in declared if s in PROGRESS_ORDER]
    assert PROGRESS_ORDER == (
        S.EXPORTING,
        S.UPLOADING,
        S.CONFIGURING,
        S.PARSING,
        S.READY,
        S.LAUNCHING,
        S.VERIFYING,
        S.FETCHING_RESULTS,
        S.WRITING_BACK,
        S.COMPLETED,
    )


def test_value_lists_are_the_sets_as_sorted_strings():
    for states, values in (
        (RUNNABLE_STATES, RUNNABLE_VALUES),
        (UNSETTLED_STATES, UNSETTLED_VALUES),
        (ENDED_STATES, ENDED_VALUES),
    ):
        assert values == tuple(sorted(str(s) for s in states))
        assert all(type(v) is str for v in values)


def test_the_partial_index_keeps_its_text():
    (index,) = [i for i in Sync.__table__.indexes if i.name == "uq_syncs_unsettled_source"]
    expected = (
        "status IN ('awaiting_approval', 'configuring', 'exporting', 'fetching_results', 'launching',"
        " 'parsing', 'pending', 'ready', 'uploading', 'verifying', 'writing_back')"
    )
    assert str(index.dialect_options["postgresql"]["where"]) == expected
    assert str(index.dialect_options["sqlite"]["where"]) == expected


def test_step_jobs_are_enqueued_by_the_runners_function_name():
    assert import_attribute(STEP_JOB) is run_sync_step
