"""``TrialContext``: the one object a user's ``train(ctx)`` gets.

Training code is a plain function that also runs outside resolute::

    def train(ctx):
        model = ctx.prepare_model(Net())
        for step in range(1, 101):
            ...
            ctx.report(step, {"loss": loss})
            if ctx.should_stop():
                ctx.save_checkpoint({"model": model.state_dict(), "step": step})
                return

    if __name__ == "__main__":
        train(TrialContext.local(hparams={"lr": 0.1}))

The context is built from small sub-contexts (distributed, reporting, checkpoints), each
with a local stand-in, so the same function runs under ``python train.py`` and as a rank of
a worker group.

Seeds: before ``train`` is called, ``torch`` is seeded with ``ctx.seed`` on every rank (so a
model built from random init is identical everywhere), while Python's ``random`` and
``numpy`` are seeded with ``ctx.seed + ctx.rank`` (so per-rank randomness such as data
augmentation differs between ranks). ``prepare_loader`` shuffles with ``ctx.seed`` so that
all ranks agree on the order and split it without overlap.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from resolute.elastic.backends.base import WorldInfo
from resolute.elastic.spec import Report
from resolute.elastic.subcontexts import (
    STATE_FILE,
    CheckpointContext,
    CheckpointStore,
    DirectoryCheckpointStore,
    DistributedContext,
    LocalReporting,
    Reporting,
)

__all__ = [
    "STATE_FILE",
    "CheckpointContext",
    "CheckpointStore",
    "DirectoryCheckpointStore",
    "DistributedContext",
    "LocalReporting",
    "Membership",
    "Reporting",
    "TrialContext",
    "WorkerCache",
    "apply_seed",
    "attach_log_file",
    "local_context",
]

if TYPE_CHECKING:
    import torch

    from resolute.elastic.state import ElasticState


class WorkerCache:
    """A per-worker-process store that survives across trials on a reused warm worker.

    The documented place for datasets: ``data = ctx.cache.get_or_create("mnist", load)``
    loads once per worker process, and later trials on the same warm worker get it at once.
    Values are shared by every trial the worker runs: treat them as read-only."""

    def __init__(self) -> None:
        self._data: dict[str, Any] = {}
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get_or_create(self, key: str, fn: Callable[[], Any]) -> Any:
        with self._lock:
            if key in self._data:
                self.hits += 1
                return self._data[key]
            self.misses += 1
            value = fn()
            self._data[key] = value
            return value

    def get(self, key: str, default: Any = None) -> Any:
        with self._lock:
            return self._data.get(key, default)

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._data

    def __len__(self) -> int:
        with self._lock:
            return len(self._data)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()


def apply_seed(seed: int, rank: int) -> None:
    import numpy as np
    import torch

    torch.manual_seed(seed)
    random.seed(seed + rank)
    np.random.seed((seed + rank) % 2**32)


# -- the context ------------------------------------------------------------------------


class Membership(Protocol):
    """How an elastic state takes part in re-formations (worker side; absent locally)."""

    @property
    def generation(self) -> int: ...

    @property
    def checkpoint_period(self) -> float | None: ...

    def mark_elastic(self) -> None: ...

    def pending_generation(self) -> int: ...

    def on_commit(self, *, commits: int, step: int) -> None: ...

    def delivered_step(self) -> int: ...

    def prune_replays(self, delivered_step: int) -> None: ...

    def replay_after_reform(self, *, up_to_step: int) -> None: ...

    def leave_and_rejoin(self, cause: BaseException, *, planned: bool) -> WorldInfo: ...


class TrialContext:
    """What ``train(ctx)`` gets. See the module docstring; build one locally with
    ``TrialContext.local(...)``."""

    def __init__(
        self,
        *,
        hparams: Mapping[str, Any],
        trial_id: int,
        experiment: str,
        seed: int,
        distributed: DistributedContext,
        reporting: Reporting,
        checkpoints: CheckpointContext,
        log: logging.Logger,
        cache: WorkerCache,
        membership: Membership | None = None,
        checkpoint_period: float | None = None,
    ) -> None:
        self.hparams: dict[str, Any] = dict(hparams)
        self.trial_id = trial_id
        self.experiment = experiment
        self.seed = seed
        self.log = log
        self.cache = cache
        self._dist = distributed
        self._reporting = reporting
        self._checkpoints = checkpoints
        self._membership = membership
        self._checkpoint_period = checkpoint_period

    @classmethod
    def local(
        cls,
        hparams: Mapping[str, Any] | None = None,
        *,
        trial_id: int = 0,
        experiment: str = "local",
        seed: int = 0,
        checkpoint_dir: str | Path | None = None,
        restore_from: str | None = None,
        log_file: str | Path | None = None,
        use_gpu: bool = False,
        checkpoint_period: float | None = None,
    ) -> TrialContext:
        """A single-process context for running ``train(ctx)`` as a plain script.

        Checkpoints go to ``checkpoint_dir`` (default ``./checkpoints``); reports are kept in
        ``ctx.local_reports`` and logged; ``ctx.request_stop()`` plays the control plane."""
        log = logging.getLogger(f"resolute.trial.{trial_id}")
        log.setLevel(logging.INFO)
        if log_file is not None:
            attach_log_file(log, Path(log_file), fmt="%(asctime)s %(levelname)s %(message)s")
        root = Path(checkpoint_dir) if checkpoint_dir is not None else Path("checkpoints")
        apply_seed(seed, 0)
        world = WorldInfo(
            rank=0,
            world_size=1,
            local_rank=0,
            local_world_size=1,
            node_rank=0,
            num_nodes=1,
            generation=0,
            use_gpu=use_gpu,
        )
        return cls(
            hparams=hparams or {},
            trial_id=trial_id,
            experiment=experiment,
            seed=seed,
            distributed=DistributedContext(world=world, backend=None),
            reporting=LocalReporting(log=log),
            checkpoints=CheckpointContext(
                store=DirectoryCheckpointStore(root),
                trial_id=trial_id,
                restore_from=restore_from,
                scratch_dir=root / ".scratch",
            ),
            log=log,
            cache=WorkerCache(),
            checkpoint_period=checkpoint_period,
        )

    # -- who am I ---------------------------------------------------------------------

    @property
    def rank(self) -> int:
        return self._dist.world.rank

    @property
    def world_size(self) -> int:
        return self._dist.world.world_size

    @property
    def local_rank(self) -> int:
        return self._dist.world.local_rank

    @property
    def is_chief(self) -> bool:
        return self._dist.world.rank == 0

    @property
    def device(self) -> torch.device:
        return self._dist.device

    @property
    def distributed(self) -> DistributedContext:
        return self._dist

    # -- reporting and control ---------------------------------------------------------

    def report(self, step: int, metrics: Mapping[str, float]) -> None:
        """Report metrics at ``step``. Only the chief's (rank 0's) reports are sent; call it
        on every rank with the same step and metric names (reduce values first with
        ``ctx.all_reduce_mean`` if each rank saw different data).

        When the report carries the searcher metric at or past the trial's current
        target, it blocks until the control plane decides: it either sets a new target
        (training goes on) or asks the trial to stop or pause (then ``should_stop()``
        returns True). Every rank that calls it waits here, so no rank sits inside a
        collective while the searcher thinks."""
        if self.is_chief:
            self._reporting.report(step, metrics)
        else:
            self._reporting.hold(step, metrics)

    def all_reduce_mean(self, metrics: Mapping[str, float]) -> dict[str, float]:
        """Average scalar metrics over all ranks (a collective: call it on every rank)."""
        return self._dist.all_reduce_mean(metrics)

    def should_stop(self) -> bool:
        """True when the control plane asked the trial to stop or pause; the code should
        then save a checkpoint and return. Every rank gets the chief's answer, so all ranks
        stop at the same step: call it on every rank, as often on each. The ranks agree
        through a small collective at some calls only (at most ~0.1 s of training apart,
        and right after a report that reached the target), so calling it every step is
        cheap; a stop asked between two such calls takes effect at the next one."""
        return self._reporting.agree_stop(self._dist)

    @property
    def local_reports(self) -> list[Report]:
        return list(getattr(self._reporting, "reports", []))

    def request_stop(self, *, pause: bool = False) -> None:
        """Local runs only: act as the control plane asking the trial to stop."""
        stop = getattr(self._reporting, "request_stop", None)
        if stop is None:
            raise RuntimeError("request_stop() is for local contexts; the scheduler stops trials")
        stop(pause=pause)

    # -- checkpoints ----------------------------------------------------------------------

    def save_checkpoint(
        self, state: Mapping[str, Any] | Path | str, *, step: int | None = None
    ) -> str | None:
        """Save durably and atomically: a dict with ``torch.save``, or a directory copied
        as-is. Only the chief writes (it returns the checkpoint's URI); other ranks return
        None at once. The control plane learns of it as a ``checkpoint`` report.

        ``step``: the step the state belongs to (default: the last reported step). Pass it
        when saving before reporting that step, as a PBT donor should."""
        if not self.is_chief:
            return None
        if step is None:
            step = self._reporting.last_step or 0
        uri = self._checkpoints.save(state, step=step)
        self._reporting.emit(
            Report(kind="checkpoint", step=step, time=float(step), checkpoint_uri=uri)
        )
        self.log.info("checkpoint saved at step %d: %s", step, uri)
        return uri

    def load_checkpoint(self) -> dict[str, Any] | Path | None:
        """The checkpoint this run starts from: the trial's own latest (resume, restart), the
        donor's (a PBT clone), or None for a fresh trial. A dict checkpoint comes back as
        the dict; a directory checkpoint as a local ``Path`` copy of it."""
        return self._checkpoints.load()

    # -- data-parallel helpers (delegate to the backend) ------------------------------------

    def prepare_model(self, model: Any) -> Any:
        """Move ``model`` to ``ctx.device`` and wrap it for data parallelism (torch: DDP
        when the world has more than one rank)."""
        return self._dist.prepare_model(model)

    def prepare_optimizer(self, optimizer: Any, model: Any = None) -> Any:
        return self._dist.prepare_optimizer(optimizer, model)

    def prepare_loader(
        self, dataset: Any, batch_size: int, shuffle: bool = True, **kwargs: Any
    ) -> Any:
        """A loader over this rank's share of ``dataset``; ``batch_size`` is per rank. With
        torch it iterates a ``DistributedSampler`` and starts a new epoch at each ``iter``
        (``loader.set_epoch(e)`` picks one explicitly)."""
        return self._dist.prepare_loader(
            dataset, batch_size=batch_size, shuffle=shuffle, seed=self.seed, **kwargs
        )

    def elastic_state(
        self, *, model: Any = None, optimizer: Any = None, step: int = 0, **extra: Any
    ) -> ElasticState:
        """Training state that survives re-formations of the group; see
        ``resolute.elastic.state.ElasticState``."""
        from resolute.elastic.state import ElasticState

        return ElasticState(ctx=self, model=model, optimizer=optimizer, step=step, extra=extra)

    @property
    def membership(self) -> Membership | None:
        return self._membership

    @property
    def checkpoint_period(self) -> float | None:
        return self._checkpoint_period


def attach_log_file(log: logging.Logger, path: Path, *, fmt: str) -> logging.Handler:
    """Send ``log``'s lines to ``path`` (appending), once per path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for handler in log.handlers:
        if (
            isinstance(handler, logging.FileHandler)
            and Path(handler.baseFilename) == path.resolve()
        ):
            return handler
    handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    handler.setFormatter(logging.Formatter(fmt))
    log.addHandler(handler)
    return handler


def local_context(hparams: Mapping[str, Any] | None = None, **kwargs: Any) -> TrialContext:
    """Same as ``TrialContext.local``."""
    return TrialContext.local(hparams, **kwargs)
