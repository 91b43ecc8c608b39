"""Measures and the report of ``resize_pause.py``: pauses from the recorded steps, each
re-formation's phases from ``WorkerGroup.timeline``, and the printed table."""

from __future__ import annotations

from typing import Any


def first_at(steps: list[tuple[int, int, float]], size: int, after: float) -> float | None:
    times = [wall for _, ws, wall in steps if ws == size and wall > after]
    return min(times) - after if times else None


def gap(steps: list[tuple[int, int, float]], size: int, after: float) -> float | None:
    """Seconds without training across the change: the last step at the old size to the
    first step at ``size`` (new ranks warm up while the old ones still train)."""
    first = first_at(steps, size, after)
    if first is None:
        return None
    t_new = after + first
    before = [wall for _, ws, wall in steps if ws != size and wall < t_new]
    return t_new - max(before) if before else None


def redone(steps: list[tuple[int, int, float]]) -> int:
    best, count = 0, 0
    for step, _, _ in steps:
        if step <= best:
            count += 1
        best = max(best, step)
    return count


# Phases of a re-formation in the order they happen; see WorkerGroup.timeline.
PHASES = (
    ("decided", "group", "resize() called"),
    ("warmed", "group", "new rank started, imported, prepared"),
    ("announced", "group", "group announces the new generation"),
    ("left_loop", "old", "ranks leave the loop at their next commit"),
    ("torn_down", "old", "old process group destroyed"),
    ("settled", "group", "group sees every rank out"),
    ("rendezvous_open", "group", "rank 0's store for the new generation is open"),
    ("worlds_sent", "group", "new worlds handed out"),
    ("world_received", "new", "ranks receive their world"),
    ("group_formed", "new", "new process group formed"),
    ("state_synced", "new", "chief's last commit broadcast"),
    ("wrapped", "user", "model wrapped (DDP / Horovod broadcast)"),
    ("first_commit", "new", "first step committed at the new size"),
)


def breakdown(
    timeline: dict[int, Any],
    generation: int,
    steps: list[tuple[int, int, float]],
    size: int,
    sink: Any,
) -> dict[str, float]:
    """Each phase of the re-formation into ``generation``, in seconds from the moment the
    running ranks stopped training (their last step at the old size), the latest rank's
    time for per-rank phases; ``pause`` is the time to the first step at the new size."""
    import ray

    new = timeline.get(generation, {"group": {}, "ranks": {}})
    old = timeline.get(generation - 1, {"group": {}, "ranks": {}})
    first_new = min(
        (st for st in steps if st[1] == size and st[2] >= new["group"].get("announced", 0.0)),
        key=lambda st: st[2],
        default=None,
    )
    if first_new is None:
        return {}
    before = [wall for _, ws, wall in steps if ws != size and wall < first_new[2]]
    if not before:
        return {}
    t0 = max(before)
    out: dict[str, float] = {}
    for name, where, _ in PHASES:
        if where == "group":
            at = new["group"].get(name)
        elif where == "user":
            at = ray.get(sink.wrapped_at.remote(first_new[0]))
        else:
            source = old if where == "old" else new
            times = [marks[name] for marks in source["ranks"].values() if name in marks]
            at = max(times) if times else None
        if at is not None:
            out[name] = at - t0
    out["first_step_reported"] = first_new[2] - t0
    return out


SYSTEMS = ("resolute_torch", "resolute_horovod", "ray_train_v2")
ROWS = (
    ("grow_s", "grow 2 -> 3: resize() to first step"),
    ("grow_gap_s", "grow 2 -> 3: pause"),
    ("shrink_by_resize_call_s", "shrink 3 -> 2 by resize(): to first step"),
    ("shrink_by_resize_call_gap_s", "shrink 3 -> 2 by resize(): pause"),
    ("regrow_warm_s", "grow 2 -> 3 onto a warm worker: to first step"),
    ("regrow_warm_gap_s", "grow 2 -> 3 onto a warm worker: pause"),
    ("shrink_on_node_loss_s", "node lost 3 -> 2: removal to first step"),
    ("shrink_on_node_loss_gap_s", "node lost 3 -> 2: pause"),
    ("steps_redone", "steps redone"),
)


def print_table(measured: dict[str, dict[str, Any]]) -> None:
    systems = [s for s in SYSTEMS if s in measured]
    print(f"\n{'seconds':<48}" + "".join(f"{s:>18}" for s in systems))
    for key, label in ROWS:
        cells = []
        for system in systems:
            value = measured[system].get(key, "-")
            cells.append(f"{value:.2f}" if isinstance(value, float) else str(value))
        print(f"{label:<48}" + "".join(f"{c:>18}" for c in cells))
    for system in systems:
        for change, parts in measured[system].get("breakdown", {}).items():
            print(f"\n{system} {change}: seconds from the last step at the old size")
            for name, _, what in PHASES:
                if name in parts:
                    print(f"  {parts[name]:+8.3f}  {name:<16} {what}")
            print(f"  {parts.get('first_step_reported', float('nan')):+8.3f}  first step reported")
