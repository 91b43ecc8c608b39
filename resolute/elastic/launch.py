"""How a ``WorkerGroup`` puts ranks to work: warm new workers, prepare their trial run,
open the rendezvous on rank 0, hand every rank its world, and watch each one's status.

A mixin of ``WorkerGroup`` (``group.py``), under ``Reformation`` (``reform.py``). Everything
a rank needs before it can join a generation (its process, imports, the trial's context,
the rendezvous store) is made ready here while the running ranks still train, so that a
re-formation pauses them only for leaving the old process group and joining the new one.

Every phase is timestamped (wall clock, comparable across nodes): the group's own steps
here, each rank's in the worker (``TrialWorker.marks``); ``timeline`` joins them. The
group's membership events go to the trial log and, as ``Report(kind="event")``, the sink.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from resolute.context import attach_log_file
from resolute.elastic.backends.base import WorldInfo
from resolute.elastic.control import WorkerStatus
from resolute.elastic.placement import Shape
from resolute.elastic.plan import build_worlds
from resolute.elastic.pool import PooledWorker, WorkerPool
from resolute.elastic.spec import Report, TrialSpec
from resolute.elastic.worker import WorkerBusy
from resolute.errors import EntrypointError, ResourcesUnavailable

if TYPE_CHECKING:
    from resolute.elastic.plan import TrialOutcome

POLL_S = 10.0
RENDEZVOUS_TIMEOUT_S = 120.0


@dataclass(eq=False)
class Member:
    """One rank's worker in the group, with what the group last heard from it."""

    worker: PooledWorker
    status: WorkerStatus = field(default_factory=WorkerStatus)
    lost: bool = False
    prepared: bool = False  # its trial run is built (``TrialWorker.prepare``)
    watcher: asyncio.Task[None] | None = None

    @property
    def settled(self) -> bool:
        return self.lost or self.status.phase in ("interrupted", "done")

    @property
    def done(self) -> bool:
        return self.lost or self.status.phase == "done"


@dataclass
class Rendezvous:
    """A rendezvous opened on ``host`` for ``generation`` of ``world_size`` ranks."""

    host: Member
    generation: int
    world_size: int
    info: dict[str, Any]


class Launcher:
    """Launch and rendezvous steps of ``WorkerGroup``; the attributes below are the group's."""

    spec: TrialSpec
    min_workers: int
    max_workers: int
    _pool: WorkerPool
    _shape: Shape
    _sink: Any
    _members: list[Member]
    _generation: int
    _until: float
    _stop: bool
    _pause: bool
    _events: asyncio.Queue[tuple[Any, ...]]
    _outcome: asyncio.Future[TrialOutcome] | None
    _marks: dict[int, dict[str, float]]
    _last_step: int | None
    _log: logging.Logger

    def _check_size(self, n: int) -> None:
        if not self.min_workers <= n <= self.max_workers:
            raise ValueError(
                f"trial {self.spec.trial_id}: {n} rank(s) is outside "
                f"[{self.min_workers}, {self.max_workers}]"
            )

    def _mark(self, generation: int, name: str, at: float | None = None) -> None:
        self._marks.setdefault(generation, {})[name] = time.time() if at is None else at

    @property
    def _key(self) -> str:
        return self.spec.run_key

    async def _acquire(
        self, n: int, *, prefer_nodes: list[str] | None = None, timeout_s: float | None = None
    ) -> list[PooledWorker]:
        return await self._pool.acquire(
            shape=self._shape,
            n=n,
            reuse=self.spec.reuse_workers,
            prefer_nodes=prefer_nodes or [],
            timeout_s=timeout_s,
            owner=self._key,
        )

    async def _return(self, workers: list[PooledWorker], *, reuse: bool | None = None) -> None:
        keep = self.spec.reuse_workers if reuse is None else reuse
        await self._pool.release(workers, reuse=keep, owner=self._key)

    async def _starting(self, calls: Any) -> None:
        """Await the calls that start runs on workers, with their failures in the group's
        terms: the user's broken entrypoint, or no usable worker (``ResourcesUnavailable``:
        the trial queues again, no restart used)."""
        import ray

        try:
            await calls
        except ray.exceptions.RayTaskError as exc:
            cause = exc.cause if isinstance(exc.cause, BaseException) else None
            if isinstance(cause, EntrypointError):
                raise EntrypointError(str(cause)) from None
            if isinstance(cause, WorkerBusy):
                raise ResourcesUnavailable(str(cause)) from None
            raise
        except ray.exceptions.RayActorError as exc:
            raise ResourcesUnavailable(f"a worker died while starting the trial: {exc}") from None

    async def _warm(self, workers: list[PooledWorker], *, joining: bool = False) -> None:
        """``joining``: the workers will join a running group (a grow or refill), which
        pauses for them: they import now what the running ranks' user code made torch
        import lazily (``torch._dynamo``, seconds), and only if it did: a newcomer runs the
        same code, and an import it will never need only keeps its slot idle longer."""
        joining = joining and any(m.status.lazy_imports for m in self._members)
        await self._starting(
            asyncio.gather(
                *(w.handle.warm.remote(self.spec, w.after, joining=joining) for w in workers)
            )
        )
        self._pool.confirm(workers)

    async def _start_single(self, member: Member) -> None:
        """Start a one-rank run in one call to its worker (which first waits for the run it
        succeeds, if it was claimed from one)."""
        spec = self._spec_now()
        world = build_worlds(
            [member.worker.node_id],
            generation=0,
            rendezvous={},
            use_gpu=self._shape.gpus > 0,
            timeout_s=RENDEZVOUS_TIMEOUT_S,
        )[0]
        handle = member.worker.handle
        await self._starting(
            handle.start_single.remote(spec, world, self._sink, member.worker.after)
        )
        self._pool.confirm([member.worker])
        member.prepared = True
        self._generation = 0
        self._mark(0, "rendezvous_open")
        self._mark(0, "worlds_sent")
        # Decisions that came while the worker was busy with the run before went to that
        # run's key; they are this run's now.
        if self._until != spec.until:
            handle.set_target.remote(self._key, self._until)
        if self._stop:
            handle.request_stop.remote(self._key, self._pause)

    async def _give_back(self, workers: list[PooledWorker], failure: BaseException) -> None:
        """Return workers a start or grow could not use. Kept warm only when the fault is
        not theirs (the user's entrypoint, a cancellation): a worker whose own warm-up
        failed (e.g. its runtime_env working_dir was deleted under it) must not be handed
        to the next trial to fail again. A worker claimed from an ending trial goes back to
        that trial's group, whatever the fault (``WorkerPool.release``)."""
        theirs = not isinstance(failure, (EntrypointError, asyncio.CancelledError))
        await self._return(workers, reuse=self.spec.reuse_workers and not theirs)

    def _spec_now(self) -> TrialSpec:
        return replace(self.spec, until=self._until)

    async def _prepare(self, members: list[Member]) -> None:
        """Build the trial's run (context, log, backend object) on members that have none,
        without starting user code: the world they get later only sets their rank."""
        todo = [m for m in members if not m.prepared]
        if not todo:
            return
        spec = self._spec_now()
        provisional = build_worlds(
            [m.worker.node_id for m in todo],
            generation=self._generation,
            rendezvous={},
            use_gpu=self._shape.gpus > 0,
            timeout_s=RENDEZVOUS_TIMEOUT_S,
        )
        await asyncio.gather(
            *(
                m.worker.handle.prepare.remote(spec, world, self._sink)
                for m, world in zip(todo, provisional, strict=True)
            )
        )
        for m in todo:
            m.prepared = True

    async def _open_rendezvous(
        self, host: Member, *, world_size: int, generation: int
    ) -> Rendezvous:
        """Have ``host`` (the next rank 0, prepared) open the store the next generation meets
        at; the store stays open while the current generation trains on."""
        info = await host.worker.handle.rendezvous_info.remote(
            self._key, world_size=world_size, generation=generation
        )
        return Rendezvous(host=host, generation=generation, world_size=world_size, info=info)

    async def _launch(
        self,
        members: list[Member],
        *,
        generation: int,
        survivors: list[Member],
        rendezvous: Rendezvous | None = None,
    ) -> None:
        """Form ``generation`` with ``members`` (in rank order). Survivors already hold a
        prepared run and wait for their world; the others are prepared if need be and
        launched. ``rendezvous``, opened ahead of time, is used when it fits."""
        await self._prepare([m for m in members if m not in survivors])
        fits = (
            rendezvous is not None
            and rendezvous.host is members[0]
            and rendezvous.generation == generation
            and rendezvous.world_size == len(members)
        )
        if not fits:
            rendezvous = await self._open_rendezvous(
                members[0], world_size=len(members), generation=generation
            )
        assert rendezvous is not None
        self._mark(generation, "rendezvous_open")
        worlds = build_worlds(
            [m.worker.node_id for m in members],
            generation=generation,
            rendezvous=rendezvous.info,
            use_gpu=self._shape.gpus > 0,
            timeout_s=RENDEZVOUS_TIMEOUT_S,
        )
        for m, world in zip(members, worlds, strict=True):
            self._hand_out(m, world, survivor=m in survivors)
        self._generation = generation
        self._mark(generation, "worlds_sent")

    def _hand_out(self, member: Member, world: WorldInfo, *, survivor: bool) -> None:
        if survivor:
            member.worker.handle.give_world.remote(self._key, world)
            return
        member.worker.handle.launch.remote(self._key, world, self._until)
        if self._stop:
            member.worker.handle.request_stop.remote(self._key, self._pause)

    async def _watch(self, member: Member) -> None:
        import ray

        since = 0
        while True:
            try:
                status: WorkerStatus = await member.worker.handle.poll.remote(
                    self._key, since, POLL_S
                )
            except ray.exceptions.ActorUnavailableError:
                await asyncio.sleep(0.5)  # transient (e.g. a network blip): ask again
                continue
            except ray.exceptions.RayActorError as exc:
                self._events.put_nowait(("lost", member, exc))
                return
            if status.version > since:
                since = status.version
                self._events.put_nowait(("status", member, status))
            if status.phase == "done":
                return

    async def timeline(self) -> dict[int, dict[str, Any]]:
        """When each phase of each generation happened (wall clock, seconds since the
        epoch): ``{generation: {"group": {phase: t}, "ranks": {pid: {phase: t}}}}``. The
        group's phases: ``decided`` (resize called), ``warmed`` (new ranks ready),
        ``announced``, ``settled`` (every rank left the old group), ``rendezvous_open``,
        ``worlds_sent``. A rank's: ``left_loop``, ``torn_down`` (old generation),
        ``world_received``, ``group_formed``, ``state_synced``, ``first_commit``; a new
        rank's ``thread_started``. Ranks that have left the group are not asked."""
        out: dict[int, dict[str, Any]] = {
            g: {"group": dict(marks), "ranks": {}} for g, marks in self._marks.items()
        }
        members = [m for m in self._members if not m.lost]
        answers = await asyncio.gather(
            *(m.worker.handle.marks.remote(self._key) for m in members), return_exceptions=True
        )
        for m, marks in zip(members, answers, strict=True):
            if isinstance(marks, BaseException):
                continue  # gone meanwhile: the others' phases still tell the story
            for generation, name, at in marks:
                entry = out.setdefault(generation, {"group": {}, "ranks": {}})
                entry["ranks"].setdefault(m.worker.pid, {})[name] = at
        return out

    # -- the group's record: events to the sink and the trial log -------------------------

    def _num_nodes(self) -> int:
        return len({m.worker.node_id for m in self._members})

    def _open_log(self) -> logging.Logger:
        log = logging.getLogger(f"resolute.group.{self.spec.trial_id}")
        log.setLevel(logging.INFO)
        log.propagate = False
        try:
            from resolute.runtime.storage import ExperimentStorage

            storage = ExperimentStorage(
                root=self.spec.storage_root, experiment_id=self.spec.experiment_id
            )
            attach_log_file(
                log,
                Path(storage.trial_log_path(self.spec.trial_id)),
                fmt="%(asctime)s group %(levelname)s %(message)s",
            )
        except Exception:  # noqa: BLE001 - events still reach the sink without a log file
            logging.getLogger(__name__).exception("cannot open the trial log")
        return log

    def _close_log(self) -> None:
        for handler in list(self._log.handlers):
            self._log.removeHandler(handler)
            handler.close()

    def _event(self, message: str) -> None:
        self._log.info("%s", message)
        step = self._last_step or 0
        report = Report(kind="event", step=step, time=float(step), message=message)
        with contextlib.suppress(Exception):
            self._sink.on_reports.remote(self.spec.trial_id, [report])
