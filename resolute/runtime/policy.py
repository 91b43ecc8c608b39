"""Slot allocation: which trials run, at what size, on which nodes. Pure: no Ray, no clock.

Input: the cluster's nodes with their resources, the experiments (priority, weight,
max_slots), and every trial that holds or wants slots (its slot shape, ``{min, max}``, its
current placement if running). Output: every trial's target size and placement.

The rules, in the order they apply:

1. **Priority first** (lower number wins, as in Determined). A tier is placed before any
   lower tier sees the cluster.
2. **Minimums, by weighted fair share.** Within a tier, trials get their ``min`` slots one
   trial at a time, always to the experiment with the smallest ``slots / weight`` so far
   (max-min progressive filling); ties go to running trials (no needless preemption), then
   to the oldest. A running trial keeps its minimum on the nodes it already uses; a new one is
   packed onto the fewest nodes, preferring capacity nobody currently uses. A trial whose
   minimum does not fit is queued (or, if running, preempted).
3. **Elastic lending.** Capacity left after every tier's minimums is lent to placed elastic
   trials up to their ``max``, tier by tier, by the same weighted fair share. Lent slots are
   the first to go: a higher tier's minimum is computed before any lending, so it takes lent
   slots back (the lender shrinks toward its min) before it preempts a whole trial.
4. **Anti-thrash.** Within ``cooldown_s`` of a resize a running trial is not resized back
   and forth: after a shrink it is not grown, and it keeps the ranks it has beyond its
   minimum where they are still free once every minimum is placed (a queued trial's minimum
   takes them back, another lender's share does not). A trial that just grew may grow
   again: in a search's tail slots free up one by one, and each goes to work at once.
5. ``max_slots`` caps an experiment's total. Slots an experiment holds that the policy may
   not move (``reserved``: groups starting or winding down) count toward its share and cap;
   the caller takes their capacity off the nodes.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

Resources = Mapping[str, float]


@dataclass(frozen=True)
class NodeSpec:
    node_id: str
    resources: Resources


@dataclass(frozen=True)
class ExperimentSpec:
    experiment_id: int
    priority: int = 42
    weight: float = 1.0
    max_slots: int | None = None
    reserved: int = 0  # slots it holds that no rule may move (starting, winding down)


@dataclass(frozen=True)
class TrialDemand:
    trial_id: int
    experiment_id: int
    slot: Resources  # one slot's resources, e.g. {"CPU": 1, "GPU": 1}
    min_slots: int
    max_slots: int
    placement: Mapping[str, int] = field(default_factory=dict)  # node -> ranks (running)
    order: int = 0  # FIFO order among equals (smaller = older)
    last_resize: float | None = None  # when its size last changed (policy clock units)
    last_grew: bool = False  # whether that change was a grow

    @property
    def running(self) -> bool:
        return sum(self.placement.values()) > 0

    @property
    def size(self) -> int:
        return sum(self.placement.values())


class Change(str, enum.Enum):
    START = "start"
    KEEP = "keep"
    GROW = "grow"
    SHRINK = "shrink"
    PREEMPT = "preempt"
    WAIT = "wait"


@dataclass(frozen=True)
class Allocation:
    trial_id: int
    size: int
    placement: dict[str, int]
    change: Change


@dataclass
class _Cluster:
    free: dict[str, dict[str, float]]
    idle: dict[str, dict[str, float]]  # capacity no running trial occupies now

    def fits(self, node: str, slot: Resources, pool: str = "free") -> int:
        """How many slots of this shape fit on ``node``."""
        avail = (self.free if pool == "free" else self.idle)[node]
        counts = [int(avail.get(k, 0.0) / v + 1e-9) for k, v in slot.items() if v > 0]
        return min(counts) if counts else 1_000_000

    def take(self, node: str, slot: Resources, n: int) -> None:
        for pool in (self.free, self.idle):
            for k, v in slot.items():
                pool[node][k] = pool[node].get(k, 0.0) - v * n
                if pool is self.idle and pool[node][k] < 0:
                    pool[node][k] = 0.0


def _new_cluster(nodes: Sequence[NodeSpec], trials: Sequence[TrialDemand]) -> _Cluster:
    free = {n.node_id: dict(n.resources) for n in nodes}
    idle = {n.node_id: dict(n.resources) for n in nodes}
    for t in trials:
        for node, ranks in t.placement.items():
            if node in idle:
                for k, v in t.slot.items():
                    idle[node][k] = max(idle[node].get(k, 0.0) - v * ranks, 0.0)
    return _Cluster(free=free, idle=idle)


def _place(
    cluster: _Cluster, trial: TrialDemand, n: int, prefer: Mapping[str, int]
) -> dict[str, int] | None:
    """Place ``n`` ranks: first on the trial's own nodes (up to what it has there), then on
    the fewest other nodes, idle capacity first. None if they do not fit (nothing taken)."""
    plan: dict[str, int] = {}
    left = n
    for node in sorted(prefer, key=lambda k: (-prefer[k], k)):
        if node not in cluster.free or left == 0:
            continue
        k = min(prefer[node], cluster.fits(node, trial.slot), left)
        if k > 0:
            plan[node] = k
            left -= k
    if left > 0:
        candidates = [node for node in cluster.free if cluster.fits(node, trial.slot) > 0]
        # One node that holds all the rest, best fit (idle first, least left over); else the
        # nodes with the most room first, so the trial spans as few nodes as possible.
        whole = [
            node
            for node in candidates
            if cluster.fits(node, trial.slot) - plan.get(node, 0) >= left
        ]
        if whole:
            whole.sort(
                key=lambda node: (
                    cluster.fits(node, trial.slot, "idle") < left,
                    cluster.fits(node, trial.slot) - left,
                    node,
                )
            )
            plan[whole[0]] = plan.get(whole[0], 0) + left
            left = 0
        else:
            candidates.sort(
                key=lambda node: (
                    -cluster.fits(node, trial.slot, "idle"),
                    -cluster.fits(node, trial.slot),
                    node,
                )
            )
            for node in candidates:
                room = cluster.fits(node, trial.slot) - plan.get(node, 0)
                k = min(room, left)
                if k > 0:
                    plan[node] = plan.get(node, 0) + k
                    left -= k
                if left == 0:
                    break
    if left > 0:
        return None
    for node, k in plan.items():
        cluster.take(node, trial.slot, k)
    return plan


def fits_ever(trial: TrialDemand, nodes: Sequence[NodeSpec]) -> bool:
    """Whether the trial's minimum fits on an otherwise empty cluster of these nodes."""
    cluster = _new_cluster(nodes, [])
    return _place(cluster, trial, trial.min_slots, {}) is not None


def allocate(
    *,
    nodes: Sequence[NodeSpec],
    experiments: Sequence[ExperimentSpec],
    trials: Sequence[TrialDemand],
    now: float = 0.0,
    cooldown_s: float = 0.0,
) -> dict[int, Allocation]:
    """Target size and placement of every trial (see the module docstring for the rules)."""
    exps = {e.experiment_id: e for e in experiments}
    cluster = _new_cluster(nodes, trials)
    plans: dict[int, dict[str, int]] = {}
    used: dict[int, int] = {e: spec.reserved for e, spec in exps.items()}
    by_tier: dict[int, list[TrialDemand]] = {}
    for t in trials:
        by_tier.setdefault(exps[t.experiment_id].priority, []).append(t)
    tiers = sorted(by_tier)

    def cap_left(t: TrialDemand) -> int:
        limit = exps[t.experiment_id].max_slots
        return 1_000_000 if limit is None else limit - used[t.experiment_id]

    def share(exp_id: int) -> float:
        return used[exp_id] / max(exps[exp_id].weight, 1e-9)

    def cooling(t: TrialDemand) -> bool:
        return t.running and t.last_resize is not None and now - t.last_resize < cooldown_s

    # Minimums, tier by tier, by weighted fair share.
    for tier in tiers:
        waiting = sorted(by_tier[tier], key=lambda t: (not t.running, t.order, t.trial_id))
        while waiting:
            pick = min(
                waiting,
                key=lambda t: (share(t.experiment_id), not t.running, t.order, t.trial_id),
            )
            waiting.remove(pick)
            if cap_left(pick) < pick.min_slots:
                continue
            plan = _place(cluster, pick, pick.min_slots, pick.placement)
            if plan is not None:
                plans[pick.trial_id] = plan
                used[pick.experiment_id] += sum(plan.values())

    # Anti-thrash: a trial resized within the cool-down keeps the ranks it has beyond its
    # minimum where they are still free once every minimum is placed (a queued trial's
    # minimum takes lent slots back; other lenders' fair share does not).
    for tier in tiers:
        for pick in sorted(by_tier[tier], key=lambda t: (t.order, t.trial_id)):
            if pick.trial_id not in plans or not cooling(pick):
                continue
            plan = plans[pick.trial_id]
            want = min(pick.size, pick.max_slots, sum(plan.values()) + max(cap_left(pick), 0))
            while sum(plan.values()) < want:
                keep = {n: k - plan.get(n, 0) for n, k in pick.placement.items()}
                extra = _place(cluster, pick, 1, {n: k for n, k in keep.items() if k > 0})
                if extra is None:
                    break
                for node, k in extra.items():
                    plan[node] = plan.get(node, 0) + k
                used[pick.experiment_id] += 1

    # Lending: leftover capacity to placed elastic trials, one slot at a time, fair share.
    for tier in tiers:
        growers = [
            t
            for t in by_tier[tier]
            if t.trial_id in plans
            and t.max_slots > sum(plans[t.trial_id].values())
            and not (cooling(t) and not t.last_grew)
        ]
        while growers:
            pick = min(
                growers,
                key=lambda t: (
                    share(t.experiment_id),
                    sum(plans[t.trial_id].values()),
                    t.order,
                    t.trial_id,
                ),
            )
            current = plans[pick.trial_id]
            extra = None
            if cap_left(pick) > 0:
                # Keep the ranks it already runs; else stay on the nodes it already uses.
                prefer = {
                    n: k - current.get(n, 0)
                    for n, k in pick.placement.items()
                    if k > current.get(n, 0)
                } or dict.fromkeys(current, 1)
                extra = _place(cluster, pick, 1, prefer)
            if extra is None:
                growers.remove(pick)
                continue
            for node, k in extra.items():
                current[node] = current.get(node, 0) + k
            used[pick.experiment_id] += 1
            if sum(current.values()) >= pick.max_slots:
                growers.remove(pick)

    result: dict[int, Allocation] = {}
    for t in trials:
        plan = plans.get(t.trial_id, {})
        size = sum(plan.values())
        if not t.running:
            change = Change.START if size else Change.WAIT
        elif size == 0:
            change = Change.PREEMPT
        elif size > t.size:
            change = Change.GROW
        elif size < t.size:
            change = Change.SHRINK
        else:
            change = Change.KEEP
        result[t.trial_id] = Allocation(t.trial_id, size, plan, change)
    return result
