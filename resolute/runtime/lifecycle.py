"""Trial and experiment lifecycles: the states, and the only moves between them.

Trial (``TrialStatus``)::

    PENDING -> RUNNING <-> RESIZING -> PAUSED -> COMPLETED | STOPPED | ERRORED | KILLED
               RUNNING <-> PAUSED       (and every live state -> STOPPED | ERRORED | KILLED)

    from \\ to   PENDING RUNNING RESIZING PAUSED COMPLETED STOPPED ERRORED KILLED
    PENDING        .       x        .       .       .         x       x      x
    RUNNING        .       .        x       x       x         x       x      x
    RESIZING       .       x        .       x       .         x       x      x
    PAUSED         .       x        .       .       x         x       x      x
    COMPLETED, STOPPED, ERRORED, KILLED: final, no move out.

Meaning of each state, as the scheduler uses it:

- PENDING: journaled, waiting for its first slots.
- RUNNING: a worker group trains it (or waits at its target, holding its slots).
- RESIZING: its worker group is growing or shrinking; it returns to RUNNING, or to PAUSED
  when no slot is left for it.
- PAUSED: checkpointed, no slots; only the searcher's ``Continue`` brings it back.
- COMPLETED: trained to its end (the user's function returned, or the searcher closed it
  with ``Stop(FINISHED)``; a paused trial may be closed that way too).
- STOPPED: the searcher cut it short (``Stop(EARLY_STOPPED)``).
- ERRORED: the user's code failed and its restarts are spent, or it could not be placed.
- KILLED: a user killed it.

A move to the same state is not a transition and is refused too: the caller should know
where a trial is. A trial finishing while its group resizes is not COMPLETED directly; the
scheduler finishes the resize (RUNNING) first, so the table stays the whole truth.

Experiment (``ExperimentStatus``)::

    ACTIVE <──> PAUSED
    ACTIVE ──> COMPLETED | STOPPED | ERRORED
    PAUSED ──> STOPPED | ERRORED

    from \\ to   ACTIVE PAUSED COMPLETED STOPPED ERRORED
    ACTIVE        .      x        x        x       x
    PAUSED        x      .        .        x       x
    COMPLETED, STOPPED, ERRORED: final.

STOPPED is a user's kill; COMPLETED means the searcher issued ``Shutdown``.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

from resolute.errors import IllegalTransition


class TrialStatus(str, enum.Enum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    RESIZING = "RESIZING"
    PAUSED = "PAUSED"
    COMPLETED = "COMPLETED"
    STOPPED = "STOPPED"
    ERRORED = "ERRORED"
    KILLED = "KILLED"

    @property
    def is_terminal(self) -> bool:
        return not TRIAL_TRANSITIONS[self]


class ExperimentStatus(str, enum.Enum):
    ACTIVE = "ACTIVE"
    PAUSED = "PAUSED"
    COMPLETED = "COMPLETED"
    STOPPED = "STOPPED"
    ERRORED = "ERRORED"

    @property
    def is_terminal(self) -> bool:
        return not EXPERIMENT_TRANSITIONS[self]


_T = TrialStatus
_ENDINGS = frozenset({_T.STOPPED, _T.ERRORED, _T.KILLED})

TRIAL_TRANSITIONS: Mapping[TrialStatus, frozenset[TrialStatus]] = {
    _T.PENDING: frozenset({_T.RUNNING}) | _ENDINGS,
    _T.RUNNING: frozenset({_T.RESIZING, _T.PAUSED, _T.COMPLETED}) | _ENDINGS,
    _T.RESIZING: frozenset({_T.RUNNING, _T.PAUSED}) | _ENDINGS,
    _T.PAUSED: frozenset({_T.RUNNING, _T.COMPLETED}) | _ENDINGS,
    _T.COMPLETED: frozenset(),
    _T.STOPPED: frozenset(),
    _T.ERRORED: frozenset(),
    _T.KILLED: frozenset(),
}

_E = ExperimentStatus

EXPERIMENT_TRANSITIONS: Mapping[ExperimentStatus, frozenset[ExperimentStatus]] = {
    _E.ACTIVE: frozenset({_E.PAUSED, _E.COMPLETED, _E.STOPPED, _E.ERRORED}),
    _E.PAUSED: frozenset({_E.ACTIVE, _E.STOPPED, _E.ERRORED}),
    _E.COMPLETED: frozenset(),
    _E.STOPPED: frozenset(),
    _E.ERRORED: frozenset(),
}


def can_transition(
    old: TrialStatus | ExperimentStatus, new: TrialStatus | ExperimentStatus
) -> bool:
    """Whether ``old -> new`` is in the table (both must be of the same enum)."""
    if isinstance(old, TrialStatus) and isinstance(new, TrialStatus):
        return new in TRIAL_TRANSITIONS[old]
    if isinstance(old, ExperimentStatus) and isinstance(new, ExperimentStatus):
        return new in EXPERIMENT_TRANSITIONS[old]
    return False


def legal_targets(old: TrialStatus | ExperimentStatus) -> list[str]:
    """The states ``old`` may move to, by name, sorted (empty for a final state)."""
    if isinstance(old, TrialStatus):
        return sorted(s.value for s in TRIAL_TRANSITIONS[old])
    return sorted(s.value for s in EXPERIMENT_TRANSITIONS[old])


def check_transition(
    old: TrialStatus | ExperimentStatus,
    new: TrialStatus | ExperimentStatus,
    *,
    subject: str | None = None,
) -> None:
    """Raise ``IllegalTransition`` unless ``old -> new`` is a documented move.

    ``subject`` (e.g. ``"trial 7"``) names what was moving, for the message.
    """
    if can_transition(old, new):
        return
    what = subject or ("trial" if isinstance(old, TrialStatus) else "experiment")
    if type(old) is not type(new):
        raise IllegalTransition(
            f"{what}: cannot move from {type(old).__name__}.{old.name} to "
            f"{type(new).__name__}.{new.name}: trial and experiment states do not mix"
        )
    allowed = legal_targets(old)
    if not allowed:
        hint = f"{old.value} is final; start a new one instead"
    else:
        hint = f"from {old.value} it can only move to {', '.join(allowed)}"
    raise IllegalTransition(f"{what} cannot move from {old.value} to {new.value}: {hint}")
