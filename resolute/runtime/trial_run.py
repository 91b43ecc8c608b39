"""The scheduler's in-memory view of one trial (the journal holds the durable one)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from resolute.runtime.lifecycle import TrialStatus
from resolute.search.base import StopReason

TERMINAL = frozenset(
    {TrialStatus.COMPLETED, TrialStatus.STOPPED, TrialStatus.ERRORED, TrialStatus.KILLED}
)

# Why a running trial's group is winding down. "pause": the searcher paused it; "stop": the
# searcher stopped it; "kill": a user killed it (or the experiment); "yield": it waited at
# its target and gave its slots to queued trials; "preempt": the allocation policy took its
# slots (priority, fair share) or its experiment was paused. The last two resume on their own.
Request = str


@dataclass
class TrialRun:
    searcher_id: int
    trial_id: int
    hparams: dict[str, Any]
    seed: int
    until: float
    clone_from: int | None = None  # searcher id of the donor (PBT)
    status: TrialStatus = TrialStatus.PENDING
    group: Any = None  # elastic.group.WorkerGroup while running
    request: Request | None = None
    stop_reason: StopReason | None = None
    restarts: int = 0
    latest_checkpoint: str | None = None
    last_step: int = -1
    best: float | None = None
    best_step: int | None = None
    queued: bool = False
    queued_seq: int = 0  # global FIFO order among queued trials
    waiting: bool = False  # at its target with no decision yet (holds its slots)
    resume_pending: bool = False  # a Continue arrived while it was giving its slots back
    started_once: bool = False
    slots: int = 0  # slots it holds (running, starting, or winding down)
    resizing: bool = False
    resizable: bool = True  # False once its user code turned a resize down (no elastic state)
    last_resize: float | None = None  # monotonic time of its last resize in place
    last_grew: bool = False  # whether that resize was a grow
    history: list[str] = field(default_factory=list)
    metric_at: dict[int, float] = field(default_factory=dict)  # step -> searcher metric
    unlabelled: tuple[str, int] | None = None  # (uri, step) of a checkpoint with no metric yet
    # Reports seen in the current group's run, to drop the copies survivors replay after the
    # chief died: (step, metrics) of recent steps. Reset when a group starts.
    seen: dict[int, set[tuple[tuple[str, float], ...]]] = field(default_factory=dict)

    def first_time(self, step: int, metrics: dict[str, float]) -> bool:
        """False for an exact repeat of a report this run already delivered."""
        key = tuple(sorted(metrics.items()))
        at_step = self.seen.setdefault(step, set())
        if key in at_step:
            return False
        at_step.add(key)
        if len(self.seen) > 64:  # replays only ever repeat the last few steps
            for old in sorted(self.seen)[:-64]:
                del self.seen[old]
        return True

    @property
    def live(self) -> bool:
        return self.status not in TERMINAL

    def placement(self) -> dict[str, int]:
        """Ranks per node of its running group (empty when it has none)."""
        group = self.group
        if group is None:
            return {}
        nodes = getattr(group, "node_ids", None)
        if nodes is None:
            return {"?": self.slots} if self.slots else {}
        out: dict[str, int] = {}
        for node in nodes:
            out[node] = out.get(node, 0) + 1
        return out


@dataclass(frozen=True)
class FailedOutcome:
    """Stands in for a TrialOutcome when the group itself failed."""

    error: str
    status: str = "errored"
    counts_as_restart: bool = True
    checkpoint_uri: str | None = None
