"""Driver-side helpers: connect to (or start) Ray and the Scheduler, submit, follow.

The CLI uses these; so can a notebook::

    from resolute.runtime.client import connect, submit_and_follow
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

from resolute.config import ExperimentConfig

TERMINAL_STATUSES = ("COMPLETED", "STOPPED", "ERRORED")


@dataclass
class Connection:
    scheduler: Any  # actor handle
    embedded: bool
    address: str | None


def connect(address: str | None = None, *, journal_url: str | None = None) -> Connection:
    """Connect to the cluster at ``address`` (or ``RAY_ADDRESS``), else start an embedded Ray.

    Finds the named Scheduler actor, starting one if there is none."""
    import ray

    from resolute.runtime.scheduler import (
        NAMESPACE,
        SCHEDULER_NAME,
        Scheduler,
        default_journal_url,
        resize_cooldown_s,
    )

    address = address or os.environ.get("RAY_ADDRESS") or None
    embedded = address is None
    cooldown_s = resize_cooldown_s()  # this shell's setting, checked before anything starts
    if not ray.is_initialized():
        if embedded:
            ray.init(
                include_dashboard=False,
                namespace=NAMESPACE,
                logging_level="WARNING",
                log_to_driver=os.environ.get("RESOLUTE_WORKER_LOGS", "0") == "1",
            )
        else:
            _join(address)
    try:
        scheduler = ray.get_actor(SCHEDULER_NAME, namespace=NAMESPACE)
    except ValueError:
        options: dict[str, Any] = {"name": SCHEDULER_NAME, "namespace": NAMESPACE}
        if not embedded:
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            from resolute.runtime.cluster import head_node_id

            options.update(lifetime="detached", get_if_exists=True)
            head = head_node_id()
            if head is not None:
                # Worker nodes come and go with the autoscaler; the control plane must not.
                options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(head, soft=False)
        scheduler = Scheduler.options(**options).remote(
            journal_url or default_journal_url(), cooldown_s=cooldown_s
        )
    return Connection(scheduler=scheduler, embedded=embedded, address=address)


def _join(address: str) -> None:
    """Join a running cluster as a driver (token auth handled); a clear error if none."""
    from resolute.errors import SchedulerError
    from resolute.runtime.driver import ClusterUnreachable, connect_driver
    from resolute.runtime.scheduler import NAMESPACE

    try:
        connect_driver(address, namespace=NAMESPACE)
    except ClusterUnreachable as exc:
        raise SchedulerError(str(exc)) from exc


def attach(address: str | None = None) -> Connection:
    """Connect to the scheduler already running on the cluster at ``address`` (or
    ``RAY_ADDRESS``); never starts anything."""
    import ray

    from resolute.errors import SchedulerError
    from resolute.runtime.scheduler import NAMESPACE, SCHEDULER_NAME

    address = address or os.environ.get("RAY_ADDRESS") or None
    if address is None:
        raise SchedulerError(
            "this command talks to a scheduler on a Ray cluster: pass --address or set "
            "RAY_ADDRESS (an experiment created without a cluster runs inside its "
            "`resolute experiment create` and ends with it)"
        )
    if not ray.is_initialized():
        _join(address)
    try:
        scheduler = ray.get_actor(SCHEDULER_NAME, namespace=NAMESPACE)
    except ValueError as exc:
        raise SchedulerError(
            f"no resolute scheduler runs on the cluster at {address}: start it with "
            "`resolute cluster up` (or submit an experiment with --address)"
        ) from exc
    return Connection(scheduler=scheduler, embedded=False, address=address)


def call(conn: Connection, method: str, *args: Any) -> Any:
    """Call a scheduler method and unwrap resolute's own errors from Ray's wrapper."""
    import ray

    from resolute.errors import ResoluteError

    try:
        return ray.get(getattr(conn.scheduler, method).remote(*args))
    except ray.exceptions.RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, ResoluteError):
            raise cause from None
        raise


def format_progress(summary: dict[str, Any]) -> str:
    counts = summary.get("counts", {})
    order = ["QUEUED", "PENDING", "RUNNING", "PAUSED", "COMPLETED", "STOPPED", "ERRORED"]
    parts = [f"{k.lower()} {counts[k]}" for k in order if counts.get(k)]
    best = summary.get("best_metric")
    best_txt = (
        f"best {summary['metric']} {best:.4g} (trial {summary['best_trial']})"
        if best is not None
        else "best -"
    )
    return (
        f"[{summary['elapsed']:7.1f}s] {100 * summary['progress']:5.1f}% "
        f"| {', '.join(parts) or 'starting'} | {best_txt}"
    )


def follow(
    conn: Connection,
    experiment_id: int,
    *,
    out: TextIO = sys.stdout,
    poll_s: float = 1.0,
    on_update: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Show live progress until the experiment ends; returns its final summary."""
    import ray

    tty = out.isatty()
    last_line, last_print = "", 0.0
    while True:
        summary = ray.get(conn.scheduler.wait.remote(experiment_id, poll_s))
        if on_update:
            on_update(summary)
        line = format_progress(summary)
        now = time.monotonic()
        if tty:
            out.write("\r\033[K" + line)
            out.flush()
        elif line != last_line and (now - last_print > 5.0 or summary["done"]):
            out.write(line + "\n")
            out.flush()
            last_print = now
        last_line = line
        if summary["done"]:
            if tty:
                out.write("\n")
            return summary


def submit(conn: Connection, config: ExperimentConfig) -> int:
    """Submit ``config``; returns the experiment id.

    On a cluster, context_dir is uploaded first (``package.upload_context``): the trials'
    workers get the code from the cluster, not from this machine's disk, and the submitted
    config names the package. An embedded Ray shares this machine's disk: the workers import
    from context_dir directly (warm workers then also see edits between experiments)."""
    if not conn.embedded:
        from resolute.runtime.package import upload_context

        config = upload_context(config)
    return int(call(conn, "submit", config))


def kill(conn: Connection, experiment_id: int) -> dict[str, Any]:
    return dict(call(conn, "kill", experiment_id))


def pause_all(conn: Connection, timeout_s: float = 120.0) -> None:
    """Pause every experiment the scheduler runs and wait for their trials to checkpoint
    (an embedded session about to end: ``activate`` resumes them later)."""
    import ray

    ray.get(conn.scheduler.shutdown.remote(pause=True), timeout=timeout_s)


def close(conn: Connection) -> None:
    """End an embedded session: stop the scheduler's workers and Ray itself."""
    import ray

    if conn.embedded and ray.is_initialized():
        # Shutting down anyway: a scheduler that does not answer must not keep Ray alive.
        with contextlib.suppress(Exception):
            ray.get(conn.scheduler.shutdown.remote(), timeout=30)
        ray.shutdown()
