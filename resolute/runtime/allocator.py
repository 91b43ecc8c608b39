"""One allocation round: the scheduler's state in, ``policy.allocate`` in the middle, trials
started, resized and preempted out, and unmet demand sent to the Ray autoscaler.

The policy is pure (``runtime/policy.py``); this module only translates. It runs whenever
something changed (a trial queued or ended, a node joined or left, a priority changed) and
on a slow timer as a safety net.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from resolute.runtime.lifecycle import ExperimentStatus
from resolute.runtime.policy import (
    Allocation,
    Change,
    ExperimentSpec,
    NodeSpec,
    TrialDemand,
    allocate,
)
from resolute.runtime.trial_run import TrialRun

log = logging.getLogger("resolute.scheduler")


@dataclass(frozen=True)
class RoundResult:
    allocations: dict[int, Allocation]
    unmet: list[dict[str, float]]  # bundles the cluster could not give (for the autoscaler)


def resources_shape(res: object) -> dict[str, float]:
    """One slot's Ray resources for an experiment's ``resources`` section."""
    shape = {"CPU": float(res.cpus_per_slot)}  # type: ignore[attr-defined]
    if res.gpus_per_slot > 0:  # type: ignore[attr-defined]
        shape["GPU"] = float(res.gpus_per_slot)  # type: ignore[attr-defined]
    return shape


def slot_shape(exp: object) -> dict[str, float]:
    return resources_shape(exp.config.resources)  # type: ignore[attr-defined]


def _free_nodes(
    nodes: Sequence[NodeSpec], pinned: Iterable[tuple[dict[str, int], dict[str, float]]]
) -> list[NodeSpec]:
    """Node capacity less what trials the policy may not move hold (starting or resizing).
    Ranks whose node is not known yet are charged where they fit, roomiest node first."""
    free = {n.node_id: dict(n.resources) for n in nodes}

    def fits(node: str, shape: dict[str, float]) -> bool:
        return all(free[node].get(k, 0.0) >= v - 1e-9 for k, v in shape.items())

    def charge(node: str, shape: dict[str, float], ranks: int) -> None:
        for k, v in shape.items():
            free[node][k] = free[node].get(k, 0.0) - v * ranks

    for placement, shape in pinned:
        for node, ranks in placement.items():
            if node in free:
                charge(node, shape, ranks)
                continue
            for _ in range(ranks):
                room = [n for n in free if fits(n, shape)]
                if room:
                    charge(max(room, key=lambda n: free[n].get("CPU", 0.0)), shape, 1)
    return [NodeSpec(k, {r: max(v, 0.0) for r, v in res.items()}) for k, res in free.items()]


def plan_round(
    *,
    experiments: Sequence[object],
    nodes: Sequence[NodeSpec],
    cooldown_s: float,
    now: float | None = None,
    headroom_cap: int = 16,
) -> tuple[RoundResult, dict[int, TrialRun], dict[int, object]]:
    """Build the policy's input from the live experiments and run it. Returns the result,
    the trials it decided on, and each one's experiment."""
    now = time.monotonic() if now is None else now
    specs: list[ExperimentSpec] = []
    demands: list[TrialDemand] = []
    pinned: list[tuple[dict[str, int], dict[str, float]]] = []
    trials: dict[int, TrialRun] = {}
    owners: dict[int, object] = {}  # trial id -> its ExperimentRun
    for exp in experiments:
        if exp.status not in (ExperimentStatus.ACTIVE, ExperimentStatus.PAUSED):  # type: ignore[attr-defined]
            continue
        slots = exp.config.resources.slots_per_trial  # type: ignore[attr-defined]
        shape = slot_shape(exp)
        reserved = 0
        for tr in exp.holding():  # type: ignore[attr-defined]
            if tr.request is not None:
                # Winding down: its slots were given away when it was told to stop, and the
                # next group's placement waits for them. Counting them again would hand
                # them out twice.
                continue
            placement = tr.placement()
            if tr.group is None or tr.resizing:  # starting or resizing: not to be moved
                pinned.append((placement or {"?": tr.slots}, shape))
                reserved += tr.slots
                continue
            trials[tr.trial_id] = tr
            owners[tr.trial_id] = exp
            demands.append(
                TrialDemand(
                    trial_id=tr.trial_id,
                    experiment_id=exp.id,  # type: ignore[attr-defined]
                    slot=shape,
                    min_slots=min(slots.min, tr.slots) if tr.resizable else tr.slots,
                    max_slots=slots.max if tr.resizable else tr.slots,
                    placement=placement,
                    order=tr.queued_seq,
                    last_resize=tr.last_resize,
                    last_grew=tr.last_grew,
                )
            )
        specs.append(
            ExperimentSpec(
                exp.id,  # type: ignore[attr-defined]
                priority=exp.priority,  # type: ignore[attr-defined]
                weight=exp.weight,  # type: ignore[attr-defined]
                max_slots=exp.max_slots,  # type: ignore[attr-defined]
                reserved=reserved,
            )
        )
        for tr in exp.queued():  # type: ignore[attr-defined]
            trials[tr.trial_id] = tr
            owners[tr.trial_id] = exp
            demands.append(
                TrialDemand(
                    trial_id=tr.trial_id,
                    experiment_id=exp.id,  # type: ignore[attr-defined]
                    slot=shape,
                    min_slots=slots.min,
                    max_slots=slots.max,
                    order=tr.queued_seq,
                )
            )
    result = allocate(
        nodes=_free_nodes(nodes, pinned),
        experiments=specs,
        trials=demands,
        now=now,
        cooldown_s=cooldown_s,
    )
    unmet: list[dict[str, float]] = []
    for d in demands:
        a = result[d.trial_id]
        if a.size == 0:
            unmet += [dict(d.slot)] * d.min_slots
        elif a.size < d.max_slots:
            unmet += [dict(d.slot)] * (d.max_slots - a.size)
    return RoundResult(result, unmet[:headroom_cap]), trials, owners


def apply_round(result: RoundResult, trials: dict[int, TrialRun], owners: dict[int, object]) -> int:
    """Carry out the allocation; returns how many trials changed."""
    changed = 0
    for trial_id, alloc in result.allocations.items():
        tr = trials[trial_id]
        exp = owners[trial_id]
        if alloc.change == Change.START:
            log.info("trial %s starts with %d slot(s)", trial_id, alloc.size)
            exp.start_trial(tr, alloc.size)  # type: ignore[attr-defined]
        elif alloc.change == Change.PREEMPT:
            log.info("trial %s preempted (its slots go to other trials)", trial_id)
            exp.preempt(tr)  # type: ignore[attr-defined]
        elif alloc.change in (Change.GROW, Change.SHRINK):
            log.info("trial %s resized %d -> %d", trial_id, tr.slots, alloc.size)
            exp.resize(tr, alloc.size)  # type: ignore[attr-defined]
        else:
            continue
        changed += 1
    return changed
