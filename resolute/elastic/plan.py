"""Pure decisions of a worker group: rank order, world layout, and a trial's outcome.

No Ray here: the group (``group.py``) gathers facts, asks these functions, and carries out
the answer.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from resolute.elastic.backends.base import WorldInfo
from resolute.elastic.control import WorkerStatus


@dataclass(frozen=True)
class TrialOutcome:
    """How a trial's run on a worker group ended (``WorkerGroup.wait``)."""

    status: str  # "completed" | "stopped" | "paused" | "errored"
    error: str | None = None
    traceback: str | None = None
    last_step: int | None = None
    checkpoint_uri: str | None = None  # the latest checkpoint this run saved
    # For "errored": True when user code raised (counts against max_restarts); False when
    # the run died because workers or nodes were lost (restart it without counting).
    counts_as_restart: bool = False
    workers_lost: int = 0
    reformations: int = 0


def order_by_node(node_ids: Sequence[str], *, first: int | None = None) -> list[int]:
    """Indices of ``node_ids`` ordered so that ranks on one node are contiguous, the nodes
    with the most ranks first; ``first`` (an index) is put at rank 0 with its node."""
    counts = Counter(node_ids)
    lead_node = node_ids[first] if first is not None else None
    nodes = sorted(counts, key=lambda n: (n != lead_node, -counts[n], n))
    order: list[int] = []
    for node in nodes:
        same = [i for i, n in enumerate(node_ids) if n == node]
        if first is not None and first in same:
            same.remove(first)
            same.insert(0, first)
        order.extend(same)
    return order


def build_worlds(
    node_ids: Sequence[str],
    *,
    generation: int,
    rendezvous: dict[str, Any],
    use_gpu: bool,
    timeout_s: float,
) -> list[WorldInfo]:
    """One ``WorldInfo`` per rank, for ranks already in order (index = rank)."""
    nodes: list[str] = []
    for n in node_ids:
        if n not in nodes:
            nodes.append(n)
    per_node = Counter(node_ids)
    seen: Counter[str] = Counter()
    worlds = []
    for rank, node in enumerate(node_ids):
        worlds.append(
            WorldInfo(
                rank=rank,
                world_size=len(node_ids),
                local_rank=seen[node],
                local_world_size=per_node[node],
                node_rank=nodes.index(node),
                num_nodes=len(nodes),
                generation=generation,
                rendezvous=dict(rendezvous),
                use_gpu=use_gpu,
                timeout_s=timeout_s,
            )
        )
        seen[node] += 1
    return worlds


def pick_chief(statuses: Sequence[WorkerStatus]) -> int:
    """The survivor that becomes rank 0 after a re-formation: the one with the newest commit
    (its state is broadcast to everyone, so no committed step is lost), lowest old rank on
    ties (the old chief stays chief when it survives)."""
    if not statuses:
        raise ValueError("no survivors to pick a chief from")
    return min(range(len(statuses)), key=lambda i: (-statuses[i].commits, statuses[i].rank))


def decide_outcome(
    statuses: Sequence[WorkerStatus | None],
    *,
    stop_requested: bool,
    pause_requested: bool,
    workers_lost: int,
    reformations: int,
    last_step: int | None,
    checkpoint_uri: str | None,
) -> TrialOutcome:
    """The outcome once every member is done or lost (``None`` = lost)."""
    done = [s for s in statuses if s is not None]
    steps = [s.last_step for s in done if s.last_step is not None]
    if last_step is not None:
        steps.append(last_step)
    common: dict[str, Any] = {
        "workers_lost": workers_lost,
        "reformations": reformations,
        "last_step": max(steps) if steps else None,
        "checkpoint_uri": next((s.checkpoint_uri for s in done if s.checkpoint_uri), None)
        or checkpoint_uri,
    }
    user_errors = [s for s in done if s.outcome == "errored" and s.error_kind == "user"]
    if user_errors:
        first = min(user_errors, key=lambda s: s.rank)
        return TrialOutcome(
            status="errored",
            error=first.error,
            traceback=first.traceback,
            counts_as_restart=True,
            **common,
        )
    infra = [s for s in done if s.outcome == "errored"]
    completed = [s for s in done if s.outcome == "completed"]
    if infra or (workers_lost and not completed):
        detail = infra[0] if infra else None
        return TrialOutcome(
            status="errored",
            error=(detail.error if detail else None)
            or f"{workers_lost} worker(s) lost and the group could not continue",
            traceback=detail.traceback if detail else None,
            counts_as_restart=False,
            **common,
        )
    if pause_requested:
        return TrialOutcome(status="paused", **common)
    if stop_requested:
        return TrialOutcome(status="stopped", **common)
    return TrialOutcome(status="completed", **common)
