"""Helpers shared by the integration tests that drive a real Scheduler actor."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import ray

from resolute.runtime import client
from resolute.runtime.scheduler import NAMESPACE, Scheduler

T = TypeVar("T")


def wait_until(
    predicate: Callable[[], T], timeout_s: float, what: str, *, poll_s: float = 0.3
) -> T:
    """Poll ``predicate`` until it returns something truthy (returned), or fail naming
    ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def start_scheduler(
    folder: Path,
    *,
    embedded: bool = False,
    address: str | None = None,
    name: str | None = None,
    **options: Any,
) -> client.Connection:
    """A Scheduler actor journaling to ``folder/resolute.db``, and a connection to it (its
    ``journal_url`` attribute names the journal). End it with ``stop_scheduler``."""
    journal_url = f"sqlite:///{folder / 'resolute.db'}"
    actor_options: dict[str, Any] = {"namespace": NAMESPACE}
    if name is not None:
        actor_options["name"] = name
    scheduler = Scheduler.options(**actor_options).remote(journal_url, **options)
    conn = client.Connection(scheduler=scheduler, embedded=embedded, address=address)
    conn.journal_url = journal_url  # type: ignore[attr-defined]
    return conn


def stop_scheduler(conn: client.Connection, timeout_s: float = 120) -> None:
    """Shut the scheduler down (its experiments and warm workers end) and kill the actor."""
    ray.get(conn.scheduler.shutdown.remote(), timeout=timeout_s)
    ray.kill(conn.scheduler)
