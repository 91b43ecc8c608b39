"""The lifecycle tables: every legal move passes, every other pair raises, naming both states."""

from __future__ import annotations

import itertools

import pytest

from resolute.errors import IllegalTransition
from resolute.runtime.lifecycle import (
    EXPERIMENT_TRANSITIONS,
    TRIAL_TRANSITIONS,
    ExperimentStatus,
    TrialStatus,
    can_transition,
    check_transition,
)

T = TrialStatus
E = ExperimentStatus

# Written out by hand from the design (not derived from the module's table), so a change to
# the table that the design does not have fails here.
LEGAL_TRIAL = {
    (T.PENDING, T.RUNNING),
    (T.PENDING, T.STOPPED),
    (T.PENDING, T.ERRORED),
    (T.PENDING, T.KILLED),
    (T.RUNNING, T.RESIZING),
    (T.RUNNING, T.PAUSED),
    (T.RUNNING, T.COMPLETED),
    (T.RUNNING, T.STOPPED),
    (T.RUNNING, T.ERRORED),
    (T.RUNNING, T.KILLED),
    (T.RESIZING, T.RUNNING),
    (T.RESIZING, T.PAUSED),
    (T.RESIZING, T.STOPPED),
    (T.RESIZING, T.ERRORED),
    (T.RESIZING, T.KILLED),
    (T.PAUSED, T.RUNNING),
    (T.PAUSED, T.COMPLETED),
    (T.PAUSED, T.STOPPED),
    (T.PAUSED, T.ERRORED),
    (T.PAUSED, T.KILLED),
}

LEGAL_EXPERIMENT = {
    (E.ACTIVE, E.PAUSED),
    (E.ACTIVE, E.COMPLETED),
    (E.ACTIVE, E.STOPPED),
    (E.ACTIVE, E.ERRORED),
    (E.PAUSED, E.ACTIVE),
    (E.PAUSED, E.STOPPED),
    (E.PAUSED, E.ERRORED),
}

ALL_TRIAL_PAIRS = list(itertools.product(TrialStatus, TrialStatus))
ALL_EXPERIMENT_PAIRS = list(itertools.product(ExperimentStatus, ExperimentStatus))


def _id(pair: tuple[object, object]) -> str:
    a, b = pair
    return f"{a.value}->{b.value}"  # type: ignore[attr-defined]


def test_trial_states_are_the_documented_set() -> None:
    assert [s.value for s in TrialStatus] == [
        "PENDING",
        "RUNNING",
        "RESIZING",
        "PAUSED",
        "COMPLETED",
        "STOPPED",
        "ERRORED",
        "KILLED",
    ]
    assert set(TRIAL_TRANSITIONS) == set(TrialStatus)


def test_experiment_states_are_the_documented_set() -> None:
    assert [s.value for s in ExperimentStatus] == [
        "ACTIVE",
        "PAUSED",
        "COMPLETED",
        "STOPPED",
        "ERRORED",
    ]
    assert set(EXPERIMENT_TRANSITIONS) == set(ExperimentStatus)


@pytest.mark.parametrize("pair", ALL_TRIAL_PAIRS, ids=[_id(p) for p in ALL_TRIAL_PAIRS])
def test_every_trial_pair(pair: tuple[TrialStatus, TrialStatus]) -> None:
    old, new = pair
    if pair in LEGAL_TRIAL:
        assert can_transition(old, new)
        check_transition(old, new)
    else:
        assert not can_transition(old, new)
        with pytest.raises(IllegalTransition) as err:
            check_transition(old, new, subject="trial 7")
        message = str(err.value)
        assert "trial 7" in message
        assert old.value in message and new.value in message


@pytest.mark.parametrize("pair", ALL_EXPERIMENT_PAIRS, ids=[_id(p) for p in ALL_EXPERIMENT_PAIRS])
def test_every_experiment_pair(pair: tuple[ExperimentStatus, ExperimentStatus]) -> None:
    old, new = pair
    if pair in LEGAL_EXPERIMENT:
        assert can_transition(old, new)
        check_transition(old, new)
    else:
        assert not can_transition(old, new)
        with pytest.raises(IllegalTransition) as err:
            check_transition(old, new)
        message = str(err.value)
        assert "experiment" in message
        assert old.value in message and new.value in message


def test_terminal_states_are_exactly_those_without_exits() -> None:
    assert {s for s in TrialStatus if s.is_terminal} == {
        T.COMPLETED,
        T.STOPPED,
        T.ERRORED,
        T.KILLED,
    }
    assert {s for s in ExperimentStatus if s.is_terminal} == {E.COMPLETED, E.STOPPED, E.ERRORED}


def test_message_says_what_is_possible() -> None:
    with pytest.raises(IllegalTransition, match="only move to .*RUNNING"):
        check_transition(T.PAUSED, T.RESIZING)
    with pytest.raises(IllegalTransition, match="COMPLETED is final"):
        check_transition(T.COMPLETED, T.RUNNING)


def test_trial_and_experiment_states_do_not_mix() -> None:
    # PAUSED exists in both enums with the same value; it must not pass for the other kind.
    assert not can_transition(T.RUNNING, E.PAUSED)
    with pytest.raises(IllegalTransition, match="do not mix"):
        check_transition(E.ACTIVE, T.PAUSED)


def test_statuses_round_trip_through_their_string_value() -> None:
    # The journal stores the value; reading it back must give the same member.
    for s in TrialStatus:
        assert TrialStatus(s.value) is s
    for e in ExperimentStatus:
        assert ExperimentStatus(e.value) is e
