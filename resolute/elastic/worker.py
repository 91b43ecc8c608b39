"""The Ray actor that runs user code: one rank of a trial, reusable across trials.

A threaded actor: ``launch`` runs the user's ``train(ctx)`` in a thread of its own and
returns, so the control calls (``set_target``, ``request_stop``, ``poll``, re-formation)
arrive on the actor's other threads while user code runs. The process, its imports and its
``WorkerCache`` outlive a trial; ``finish`` resets everything else.

Every control call names the run it is for (``TrialSpec.run_key``) and is ignored by a
worker that holds another run. That lets a worker be handed to the next trial while its
current one is still winding down (a stopped trial returning from ``train``): the
successor's ``warm(after=...)`` / ``start_single(after=...)`` waits here for that run to
end and takes over at once, with no round trip to the scheduler in between.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import os
import sys
import traceback
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Any

from resolute.context import WorkerCache
from resolute.elastic.backends.base import WorldInfo
from resolute.elastic.control import WorkerStatus
from resolute.elastic.rank_run import TrialRun, make_backend
from resolute.elastic.spec import TrialSpec
from resolute.errors import EntrypointError

MAX_CONCURRENCY = 16  # user thread aside: poll, control calls and rendezvous at once
# How long a successor waits for the run it follows to end (that run was told to stop while
# waiting at its target, so it normally returns within milliseconds).
SUCCEED_TIMEOUT_S = float(os.environ.get("RESOLUTE_SUCCEED_TIMEOUT_S", "10"))
ENDED_KEPT = 8  # final statuses kept of runs that ended, for their groups' last polls


class WorkerBusy(RuntimeError):
    """The run a successor was to follow did not end in time; the worker is still its."""


def _import_backend(name: str) -> None:
    """Import the backend ``name`` and what its ``preload`` names (Horovod's library)."""
    preload = getattr(make_backend(name), "preload", None)
    if callable(preload):
        preload()


def _import_lazy_torch_modules() -> None:
    """Import what torch imports on first use: ``torch._dynamo`` is imported by the first
    optimizer built or (de)serialised (seconds). A rank joining a running group does that
    after the group has paused for it, so it is done while the worker warms instead."""
    with contextlib.suppress(ImportError):  # no torch: the user code does not need it either
        import torch._dynamo  # noqa: F401


class TrialWorker:
    """Ray actor class; create it with ``worker_actor_class().options(...).remote()``."""

    def __init__(self) -> None:
        self._cache = WorkerCache()
        self._run: TrialRun | None = None
        self._ended: dict[str, WorkerStatus] = {}  # run key -> final status
        self._frozen_at = -1  # len(sys.modules) at the last gc.freeze()
        self._env_backup: dict[str, str | None] = {}
        self._repr = "TrialWorker(idle)"
        self.trials_started = 0

    def __repr__(self) -> str:
        return self._repr

    # -- identity and warm-up ----------------------------------------------------------

    def info(self) -> dict[str, Any]:
        import ray

        rc = ray.get_runtime_context()
        return {
            "pid": os.getpid(),
            "node_id": rc.get_node_id(),
            "node_ip": ray.util.get_node_ip_address(),  # type: ignore[no-untyped-call]
            "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
            "trials_started": self.trials_started,
            "cache_hits": self._cache.hits,
            "cache_size": len(self._cache),
        }

    def preload(self, backend: str, sink: Any = None) -> None:
        """Import ``backend`` (e.g. ``torch``) ahead of any trial: a worker started for the
        first trials does it while the experiment's searcher is still starting. ``sink``,
        the handle trials will report to, is only received: unpickling a handle to the
        scheduler imports its actor class's module (``runtime.scheduler_actor``, kept light),
        better here than in a trial's start. The trial's storage layer (pyarrow) is imported too, and the heap frozen, so
        that the first trial's ``warm`` has little left to collect."""
        _import_backend(backend)
        import resolute.runtime.storage  # noqa: F401 - what TrialRun opens first

        self._freeze_heap()

    def warm(self, spec: TrialSpec, after: str | None = None, *, joining: bool = False) -> None:
        """Import the entrypoint (failing fast with ``EntrypointError``) and run the module's
        optional ``warmup(cache, hparams)`` hook, before this worker joins a group.

        ``after``: the run this worker still holds, told to stop, that ``spec`` succeeds:
        wait for it to end first (``WorkerBusy`` if it does not within a few seconds).
        ``joining``: it joins a running group, whose ranks pause until it is in: import
        now what user code would import on its first step (seconds of ``torch._dynamo``).
        A trial's first ranks start together and pay that in their own first step."""
        self._succeed(after)
        fn, module = load_entrypoint(spec.entrypoint, spec.context_dir)
        _import_backend(spec.backend)  # imports torch now, not after the group pauses
        if joining:
            _import_lazy_torch_modules()
        hook = getattr(module, "warmup", None)
        if callable(hook):
            hook(self._cache, dict(spec.hparams))
        # Imports are done: keep what survives out of every later collection, so that a
        # collection during a re-formation (or user code's) scans the trial's objects only.
        # Once per new import: on a reused worker with nothing new, a collection would only
        # delay the next trial's start.
        self._freeze_heap()

    def start_single(
        self, spec: TrialSpec, world: WorldInfo, sink: Any, after: str | None = None
    ) -> None:
        """A one-rank run in one call: ``warm``, ``prepare``, open its rendezvous and
        ``launch``. ``world`` is rank 0 of 1 without the rendezvous, which is filled in here."""
        self.warm(spec, after=after)
        self.prepare(spec, world, sink)
        run = self._require_run(spec.run_key)
        info = run.backend.rendezvous_info(world_size=1, generation=world.generation)
        self.launch(spec.run_key, replace(world, rendezvous=info), spec.until)

    def _freeze_heap(self) -> None:
        if len(sys.modules) != self._frozen_at:
            gc.collect()
            gc.freeze()
            self._frozen_at = len(sys.modules)

    def rendezvous_info(self, key: str, *, world_size: int, generation: int) -> dict[str, Any]:
        run = self._require_run(key)
        return run.backend.rendezvous_info(world_size=world_size, generation=generation)

    def prepare(self, spec: TrialSpec, world: WorldInfo, sink: Any) -> None:
        """Build the trial's run (backend, context, log) without starting user code, so
        that rank 0 can open the rendezvous before anyone calls ``setup``."""
        if self._run is not None and self._run.thread.is_alive():
            raise WorkerBusy(
                f"worker is still running trial {self._run.spec.trial_id}; finish() it first"
            )
        self._reset()
        fn, _ = load_entrypoint(spec.entrypoint, spec.context_dir)
        self._set_env(spec.env_vars)
        self._run = TrialRun(spec=spec, world=world, sink=sink, cache=self._cache, fn=fn)
        self._repr = f"TrialWorker(trial={spec.trial_id}, hparams={spec.hparams})"

    def launch(self, key: str, world: WorldInfo, until: float | None = None) -> None:
        """Start user code as ``world``'s rank; ``until`` is the target as it stands now
        (it may have moved since ``prepare``, which can come well before)."""
        run = self._require_run(key)
        if until is not None:
            run.control.set_target(until)
        run.dist.set_world(world)
        run.control.update(generation=world.generation, rank=world.rank)
        self.trials_started += 1
        run.thread.start()

    # -- control, from the group ---------------------------------------------------------

    def poll(self, key: str, since: int, timeout_s: float) -> WorkerStatus:
        run = self._holding(key)
        if run is not None:
            return run.control.poll(since, timeout_s)
        ended = self._ended.get(key)
        if ended is not None:
            return ended
        # Never prepared here, or ended so long ago that its status was dropped: a final
        # answer, so that the caller does not poll forever.
        return WorkerStatus(
            phase="done",
            version=since + 1,
            outcome="errored",
            error=f"this worker holds no run {key!r}",
            error_kind="collective",
        )

    def set_target(self, key: str, until: float) -> None:
        if (run := self._holding(key)) is not None:
            run.control.set_target(until)

    def request_stop(self, key: str, pause: bool) -> None:
        if (run := self._holding(key)) is not None:
            run.control.request_stop(pause=pause)

    def announce_reform(self, key: str, generation: int, planned: bool) -> None:
        if (run := self._holding(key)) is not None:
            run.control.announce_reform(generation, planned=planned)

    def give_world(self, key: str, world: WorldInfo) -> None:
        self._require_run(key).control.give_world(world)

    def release(self, key: str) -> None:
        if (run := self._holding(key)) is not None:
            run.control.release()

    def abort(self, key: str) -> None:
        if (run := self._holding(key)) is not None:
            run.control.abort()

    def marks(self, key: str) -> list[tuple[int, str, float]]:
        """``(generation, name, wall time)`` of the re-formation phases this rank passed."""
        run = self._holding(key)
        return list(run.marks) if run is not None else []

    def stack(self, key: str) -> str:
        """The Python stack of the thread running user code (to see where it is stuck)."""
        run = self._holding(key)
        if run is None or run.thread.ident is None:
            return ""
        frame = sys._current_frames().get(run.thread.ident)
        return "".join(traceback.format_stack(frame)) if frame is not None else ""

    def finish(self, timeout_s: float = 30.0) -> bool:
        """End this worker's part in its trial. True when the process is clean and may be
        reused; False when user code is still running (the caller must kill the actor)."""
        run = self._run
        if run is not None and run.thread.is_alive():
            run.control.request_stop(pause=False)
            run.control.abort()
            run.thread.join(timeout=timeout_s)
            if run.thread.is_alive():
                return False
        self._reset()
        return True

    # -- helpers ------------------------------------------------------------------------

    def _holding(self, key: str) -> TrialRun | None:
        run = self._run
        return run if run is not None and run.key == key else None

    def _require_run(self, key: str) -> TrialRun:
        run = self._holding(key)
        if run is None:
            held = self._run.key if self._run is not None else None
            raise RuntimeError(f"this worker holds run {held!r}, not {key!r}; prepare() it first")
        return run

    def _succeed(self, after: str | None) -> None:
        """Take over from ``after``, the run still held here that the next one follows:
        wait for its user code to return, then drop it (its group reads its final status
        from ``_ended``)."""
        run = self._run
        if run is None or after is None or run.key != after:
            return
        if run.thread.ident is not None:
            run.thread.join(timeout=SUCCEED_TIMEOUT_S)
        if run.thread.is_alive():
            raise WorkerBusy(
                f"trial {run.spec.trial_id} was told to stop but still runs after "
                f"{SUCCEED_TIMEOUT_S:g}s; its worker stays with it"
            )
        self._reset()

    def _reset(self) -> None:
        if self._run is not None:
            self._ended[self._run.key] = self._run.control.status
            while len(self._ended) > ENDED_KEPT:
                self._ended.pop(next(iter(self._ended)))
            self._run.close()
            self._run = None
        for key, old in self._env_backup.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old
        self._env_backup = {}
        self._repr = "TrialWorker(idle)"

    def _set_env(self, env: dict[str, str]) -> None:
        for key, value in env.items():
            self._env_backup.setdefault(key, os.environ.get(key))
            os.environ[key] = value


_module_stamps: dict[str, tuple[str, float]] = {}


def load_entrypoint(entrypoint: str, context_dir: str) -> tuple[Callable[..., Any], ModuleType]:
    """Import ``module:function`` with ``context_dir`` first on ``sys.path``; an empty
    ``context_dir`` means the code came as the worker's runtime_env ``working_dir``, which
    Ray unpacked and made the current directory.

    A module already imported by an earlier trial is reused when it comes from the same
    file, unchanged; otherwise it is imported afresh (another experiment's code, or an edit).
    """
    module_name, sep, fn_name = entrypoint.partition(":")
    if not sep or not module_name or not fn_name:
        raise EntrypointError(
            f"entrypoint {entrypoint!r} must look like 'module:function' "
            "(e.g. 'train:main' for main() in train.py)"
        )
    context = str(Path(context_dir or os.getcwd()).resolve())
    where = repr(context_dir) if context_dir else f"{context} (uploaded)"
    if context not in sys.path:
        sys.path.insert(0, context)
    cached = sys.modules.get(module_name)
    if cached is not None and not _fresh(module_name, cached, context):
        for name in [m for m in sys.modules if m == module_name or m.startswith(module_name + ".")]:
            del sys.modules[name]
        importlib.invalidate_caches()
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise EntrypointError(
            f"cannot import module {module_name!r} of entrypoint {entrypoint!r}: {exc}. "
            f"Check that {module_name.replace('.', '/')}.py exists under context_dir "
            f"{where} and that its own imports are installed on the workers (environment.pip)"
        ) from exc
    except Exception as exc:
        raise EntrypointError(
            f"importing {module_name!r} of entrypoint {entrypoint!r} raised "
            f"{type(exc).__name__}: {exc}. Fix the module so it imports cleanly:\n"
            + traceback.format_exc()
        ) from exc
    fn = getattr(module, fn_name, None)
    if fn is None or not callable(fn):
        raise EntrypointError(
            f"module {module_name!r} has no function {fn_name!r} (entrypoint {entrypoint!r}); "
            f"check the name after ':' (the module defines: "
            f"{sorted(n for n in vars(module) if not n.startswith('_'))[:20]})"
        )
    file = getattr(module, "__file__", None)
    if file:
        _module_stamps[module_name] = (file, os.path.getmtime(file))
    return fn, module


def _fresh(module_name: str, module: ModuleType, context: str) -> bool:
    file = getattr(module, "__file__", None)
    if not file or not str(Path(file).resolve()).startswith(context + os.sep):
        return False
    stamp = _module_stamps.get(module_name)
    return stamp is not None and stamp == (file, os.path.getmtime(file))


def worker_actor_class() -> Any:
    """The Ray actor class for ``TrialWorker`` (built on demand so that importing this module
    does not import Ray)."""
    import ray

    global _actor_class
    if _actor_class is None:
        _actor_class = ray.remote(max_concurrency=MAX_CONCURRENCY)(TrialWorker)  # type: ignore[call-overload]
    return _actor_class


_actor_class: Any = None
