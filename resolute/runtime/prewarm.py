"""Worker processes for an experiment's first trials, started while its searcher starts.

A new experiment's first trials wait for new worker processes (a Ray worker, then the
imports of resolute and the trial's code: seconds each, several at once on a busy node).
The searcher actor's own start takes seconds too, before it can name a single trial. Both
can run at once: at submit the scheduler asks the pool for the workers the first trials
will need, of their shape, has them import the training backend (``import torch``, seconds
of CPU) and take in the scheduler's handle (the trials' report sink: unpickling it imports
the actor class's module), and gives them straight back, warm and idle; the
trials that ``begin()`` creates moments later take them from the pool.

Only what fits now is asked for (free slots of that shape, the experiment's own caps, the
pool's idle limit), with a short placement timeout, so a busy or autoscaling cluster is
not held up by it: a worker it could not start is simply started by the trial, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from resolute.elastic.placement import Shape
from resolute.elastic.pool import WorkerPool

log = logging.getLogger("resolute.scheduler")

PLACEMENT_TIMEOUT_S = 5.0


def first_workers(config: Any) -> int:
    """How many workers the experiment's first trials take at once (0: none to warm)."""
    res = config.resources
    if not res.reuse_workers:
        return 0  # each trial gets fresh processes: warm ones would be thrown away
    searcher = config.searcher
    trials = getattr(searcher, "max_concurrent_trials", None) or getattr(
        searcher, "max_trials", None
    )
    wanted = max(int(trials or 1), 1) * res.slots_per_trial.min
    return wanted if res.max_slots is None else min(wanted, res.max_slots)


def slots_free(free: dict[str, float], slot: dict[str, float]) -> int:
    """How many slots of shape ``slot`` the resources ``free`` hold."""
    return min((int(free.get(k, 0.0) / v + 1e-9) for k, v in slot.items() if v > 0), default=0)


def start_prewarm(
    pool: WorkerPool,
    shape: Shape,
    *,
    wanted: int,
    free_slots: int,
    backend: str = "torch",
    sink: Any = None,
) -> asyncio.Task[None] | None:
    """Start the workers of ``shape`` that ``wanted`` asks for beyond the pool's idle ones
    (within ``free_slots`` and the pool's idle limit) in the background, with ``backend``
    imported; they end up idle in ``pool``."""
    n = min(wanted - pool.idle_count(shape), free_slots, pool.max_idle - pool.idle_count())
    if n <= 0:
        return None
    return asyncio.get_running_loop().create_task(_prewarm(pool, shape, n, backend, sink))


async def _prewarm(pool: WorkerPool, shape: Shape, n: int, backend: str, sink: Any) -> None:
    try:
        workers = await pool.acquire(shape=shape, n=n, timeout_s=PLACEMENT_TIMEOUT_S)
    except Exception as exc:  # noqa: BLE001 - the trials start their own workers instead
        log.info("no warm workers ahead of the first trials (%s)", exc)
        return
    try:
        await asyncio.gather(*(w.handle.preload.remote(backend, sink) for w in workers))
    except Exception as exc:  # noqa: BLE001 - the trial's own warm-up reports it properly
        log.info("warm workers could not import the %s backend ahead (%s)", backend, exc)
    await pool.release(workers, reuse=True)
    log.info("%d worker(s) of %s warm ahead of the first trials", len(workers), shape)


class Prewarm:
    """The scheduler's prewarming: started per experiment, awaited by its trials' groups."""

    def __init__(self, pool: WorkerPool, *, sink: Any = None) -> None:
        self._pool = pool
        self._sink = sink
        self._tasks: dict[Shape, asyncio.Task[None]] = {}

    def start(self, exp: Any) -> None:
        """Start the workers ``exp``'s first trials will take (an ``ExperimentRun``)."""
        import ray

        from resolute.runtime.allocator import slot_shape

        try:
            shape = exp.worker_shape()
            if shape.runtime_env is not None:
                # Workers started with an uploaded package's working_dir ahead of the trials
                # and handed to them from the pool failed warm() with their working
                # directory gone (tests/integration/test_multi_experiment.py); until that is
                # understood, only code imported from a shared disk is warmed ahead.
                return
            task = start_prewarm(
                self._pool,
                shape,
                wanted=first_workers(exp.config),
                free_slots=slots_free(ray.available_resources(), slot_shape(exp)),
                backend=exp.config.resources.backend,
                sink=self._sink,
            )
        except Exception:  # an optimisation only: the trials start their own workers
            log.exception("experiment %s: could not start workers ahead of time", exp.id)
            return
        if task is not None:
            self._tasks[shape] = task
            task.add_done_callback(lambda _: self._tasks.pop(shape, None))

    async def wait(self, shape: Shape) -> None:
        """Wait for workers of ``shape`` still starting: a trial takes those rather than start
        more processes beside them (the same cost, twice the CPU while they start)."""
        task = self._tasks.get(shape)
        if task is not None:
            with contextlib.suppress(Exception):  # its failure is logged; the trial goes on
                await asyncio.shield(task)
