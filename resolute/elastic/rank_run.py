"""One trial's run on a worker: the thread that runs user code, the context it gets, and
this rank's side of re-formations (leave the old process group, wait for the new world,
join it), each phase timestamped for ``WorkerGroup.timeline``.

Built by ``TrialWorker.prepare`` (``worker.py``) and dropped by its ``finish``.
"""

from __future__ import annotations

import gc
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from resolute.context import (
    CheckpointContext,
    CheckpointStore,
    DistributedContext,
    TrialContext,
    WorkerCache,
    apply_seed,
    attach_log_file,
)
from resolute.elastic.backends.base import Backend, WorldInfo, is_collective_failure
from resolute.elastic.control import Aborted, Released, TrialControl
from resolute.elastic.gpu_stats import GpuSampler
from resolute.elastic.reporter import SinkReporter
from resolute.elastic.spec import Report, TrialSpec
from resolute.errors import EntrypointError

REJOIN_TIMEOUT_S = 300.0
LOG_FORMAT = "%(asctime)s rank%(rank)s %(levelname)s %(message)s"


def make_backend(name: str) -> Backend:
    if name == "torch":
        from resolute.elastic.backends.torch import TorchBackend

        return TorchBackend()
    if name == "horovod":
        from resolute.elastic.backends import horovod

        return horovod.HorovodBackend()
    raise EntrypointError(f"unknown backend {name!r}; use 'torch' or 'horovod'")


def open_storage(spec: TrialSpec) -> Any:
    from resolute.runtime.storage import ExperimentStorage

    return ExperimentStorage(root=spec.storage_root, experiment_id=spec.experiment_id)


# What torch imports on first use (the first optimizer built or loaded: seconds of imports).
LAZY_TORCH_MODULE = "torch._dynamo"


class _RankFilter(logging.Filter):
    def __init__(self, ctx_world: Callable[[], int]) -> None:
        super().__init__()
        self._rank = ctx_world

    def filter(self, record: logging.LogRecord) -> bool:
        record.rank = self._rank()
        return True


class Membership:
    """The worker side of re-formations, handed to ``ElasticState`` via the context."""

    def __init__(self, run: TrialRun) -> None:
        self._run = run
        self._was_chief = True
        self._delivered = 0
        self._lazy_seen = False

    @property
    def generation(self) -> int:
        return self._run.dist.world.generation

    @property
    def checkpoint_period(self) -> float | None:
        return self._run.spec.checkpoint_period

    def mark_elastic(self) -> None:
        if not self._run.control.status.elastic:
            self._run.control.update(elastic=True)

    def pending_generation(self) -> int:
        return self._run.control.pending_generation()

    def on_commit(self, *, commits: int, step: int) -> None:
        self._run.control.note_commit(commits=commits, step=step)
        self._run.mark_once("first_commit")
        if not self._lazy_seen and LAZY_TORCH_MODULE in sys.modules:
            # A rank joining this group imports it while it warms (see TrialWorker.warm).
            self._lazy_seen = True
            self._run.control.update(lazy_imports=True)

    def delivered_step(self) -> int:
        return self._run.reporter.delivered_step

    def prune_replays(self, delivered_step: int) -> None:
        self._delivered = delivered_step
        self._run.reporter.prune_held(delivered_step)

    def replay_after_reform(self, *, up_to_step: int) -> None:
        self._run.mark_once("state_synced")
        if self._run.dist.world.rank == 0 and not self._was_chief:
            n = self._run.reporter.replay_held(
                delivered_step=self._delivered, up_to_step=up_to_step
            )
            if n:
                self._run.log.info("replayed %d report(s) the lost chief may not have sent", n)
        self._was_chief = self._run.dist.world.rank == 0

    def leave_and_rejoin(self, cause: BaseException, *, planned: bool) -> WorldInfo:
        run = self._run
        run.mark("left_loop")
        self._was_chief = run.dist.world.rank == 0
        run.backend.teardown()
        if not planned:
            # The old process group closes its sockets only when collected; collect now so
            # that peers blocked on this rank fail sooner (the group kills ranks that stay
            # stuck). After a planned leave nobody is blocked: no pause for a collection.
            gc.collect()
        run.mark("torn_down")
        run.control.update(
            phase="interrupted",
            interrupt_kind="planned" if planned else "failure",
            error=None if planned else f"{type(cause).__name__}: {cause}",
        )
        run.log.info("leaving generation %d: %s", self.generation, cause)
        try:
            world = run.control.wait_for_world(timeout_s=REJOIN_TIMEOUT_S)
        except Aborted:
            raise cause from None
        run.mark("world_received", generation=world.generation)
        run.backend.setup(world)
        run.dist.set_world(world)
        run.mark("group_formed")
        run.control.update(
            phase="running", rank=world.rank, generation=world.generation, interrupt_kind=None
        )
        run.log.info(
            "joined generation %d as rank %d of %d", world.generation, world.rank, world.world_size
        )
        return world


class TrialRun:
    """Everything that belongs to one trial on this worker; dropped by ``finish``."""

    def __init__(
        self, *, spec: TrialSpec, world: WorldInfo, sink: Any, cache: WorkerCache, fn: Any
    ) -> None:
        self.spec = spec
        self.key = spec.run_key
        self.fn = fn
        self._sink = sink
        self._gpu_stats: GpuSampler | None = None
        self.control = TrialControl(until=spec.until, generation=world.generation)
        self.backend = make_backend(spec.backend)
        self.dist = DistributedContext(world=world, backend=self.backend)
        self.log = logging.getLogger(f"resolute.trial.{spec.trial_id}")
        self.log.setLevel(logging.INFO)
        self.log.propagate = False
        storage = open_storage(spec)
        self._log_handler = attach_log_file(
            self.log, Path(storage.trial_log_path(spec.trial_id)), fmt=LOG_FORMAT
        )
        self._log_handler.addFilter(_RankFilter(lambda: self.dist.world.rank))
        self.reporter = SinkReporter(spec=spec, sink=sink, control=self.control, log=self.log)
        store: CheckpointStore = storage
        # Local staging for checkpoint copies (storage_root may be an object store).
        self._scratch = Path(tempfile.gettempdir()) / "resolute-scratch" / f"worker-{os.getpid()}"
        self.checkpoints = CheckpointContext(
            store=store,
            trial_id=spec.trial_id,
            restore_from=spec.restore_from,
            scratch_dir=self._scratch,
        )
        self.ctx = TrialContext(
            hparams=spec.hparams,
            trial_id=spec.trial_id,
            experiment=spec.experiment_name,
            seed=spec.seed,
            distributed=self.dist,
            reporting=self.reporter,
            checkpoints=self.checkpoints,
            log=self.log,
            cache=cache,
            membership=Membership(self),
            checkpoint_period=spec.checkpoint_period,
        )
        self.marks: list[tuple[int, str, float]] = []
        self._marked: set[tuple[int, str]] = set()
        self.thread = threading.Thread(
            target=self._main, name=f"resolute-trial-{spec.trial_id}", daemon=True
        )

    def _main(self) -> None:
        outcome, error, kind, tb = "completed", None, None, None
        try:
            self.mark("thread_started")
            self.backend.setup(self.dist.world)
            self.mark("group_formed")
            self._start_gpu_stats()
            self.control.update(
                phase="running", rank=self.dist.world.rank, generation=self.dist.world.generation
            )
            apply_seed(self.spec.seed, self.dist.world.rank)
            self.fn(self.ctx)
        except Released:
            outcome = "released"
            self.log.info("released from the group by a shrink")
        except BaseException as exc:  # noqa: BLE001 - user code may raise anything
            outcome, error = "errored", f"{type(exc).__name__}: {exc}"
            kind = "collective" if is_collective_failure(exc) else "user"
            tb = traceback.format_exc()
            self.log.error("train function failed:\n%s", tb)
        finally:
            if self._gpu_stats is not None:
                self._gpu_stats.stop()
            self.reporter.close()
            self.backend.teardown()
            self.control.update(
                phase="done",
                outcome=outcome,
                error=error,
                error_kind=kind,
                traceback=tb,
                last_step=self.reporter.last_step,
                checkpoint_uri=self.checkpoints.latest,
            )

    def _start_gpu_stats(self) -> None:
        """Every rank samples its own GPUs (none on a CPU slot: nothing starts) and sends
        them straight to the control plane as ``system/rank<r>/gpu<i>/<stat>``."""
        interval = self.spec.gpu_stats_interval_s
        if interval <= 0:
            return
        try:
            self._gpu_stats = GpuSampler(
                emit=self._send_gpu_stats, interval_s=interval, prefix="gpu"
            )
            self._gpu_stats.start()
        except Exception:  # statistics must never take training down
            self.log.warning("GPU statistics are off for this run", exc_info=True)
            self._gpu_stats = None

    def _send_gpu_stats(self, metrics: dict[str, float]) -> None:
        rank = self.dist.world.rank
        step = self.reporter.last_step or self.control.status.step or 0
        named = {f"system/rank{rank}/{key}": value for key, value in metrics.items()}
        report = Report(kind="system", step=step, time=float(step), metrics=named)
        self._sink.on_reports.remote(self.spec.trial_id, [report])

    def mark(self, name: str, *, generation: int | None = None) -> None:
        """Note when this rank passed ``name`` (wall clock, comparable across nodes) in
        ``generation`` (default: the current one); ``WorkerGroup.timeline`` gathers them."""
        gen = self.dist.world.generation if generation is None else generation
        self.marks.append((gen, name, time.time()))

    def mark_once(self, name: str) -> None:
        key = (self.dist.world.generation, name)
        if key not in self._marked:
            self._marked.add(key)
            self.marks.append((key[0], name, time.time()))

    def close(self) -> None:
        self.log.removeHandler(self._log_handler)
        self._log_handler.close()
        # Checkpoint copies handed to user code live only as long as the trial's run.
        shutil.rmtree(self._scratch, ignore_errors=True)
