"""The sub-contexts a ``TrialContext`` is built from (Determined ``core.Context`` style):
distributed (rank, backend helpers), reporting, checkpoints; each with a local stand-in so
that ``train(ctx)`` also runs as a plain script."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from resolute.elastic.backends.base import Backend, WorldInfo
from resolute.elastic.spec import Report

if TYPE_CHECKING:
    import torch

STATE_FILE = "resolute-state.pt"  # a dict checkpoint: this one file in the checkpoint directory


# -- distributed sub-context ------------------------------------------------------------


class DistributedContext:
    """Rank information and the active backend; ``backend=None`` is a single local process."""

    def __init__(self, *, world: WorldInfo, backend: Backend | None) -> None:
        self.world = world
        self.backend = backend

    def set_world(self, world: WorldInfo) -> None:
        self.world = world

    @property
    def device(self) -> torch.device:
        import torch

        device_for = getattr(self.backend, "device_for", None)
        if device_for is not None:
            return device_for(self.world)  # type: ignore[no-any-return]
        if self.world.use_gpu and torch.cuda.is_available():
            return torch.device("cuda", self.world.local_rank % torch.cuda.device_count())
        return torch.device("cpu")

    def prepare_model(self, model: Any) -> Any:
        if self.backend is None:
            return model.to(self.device)
        return self.backend.prepare_model(model)

    def prepare_optimizer(self, optimizer: Any, model: Any) -> Any:
        if self.backend is None:
            return optimizer
        return self.backend.prepare_optimizer(optimizer, model)

    def prepare_loader(
        self, dataset: Any, *, batch_size: int, shuffle: bool, seed: int, **kwargs: Any
    ) -> Any:
        if self.backend is None:
            import torch
            from torch.utils.data import DataLoader

            gen = torch.Generator()
            gen.manual_seed(seed)
            return DataLoader(
                dataset, batch_size=batch_size, shuffle=shuffle, generator=gen, **kwargs
            )
        return self.backend.prepare_loader(
            dataset, batch_size=batch_size, shuffle=shuffle, seed=seed, **kwargs
        )

    def broadcast_object(self, obj: Any, *, src: int = 0) -> Any:
        if self.backend is None or self.world.world_size == 1:
            return obj
        return self.backend.broadcast_object(obj, src=src)

    def broadcast_ints(self, values: list[int], *, src: int = 0) -> list[int]:
        """Every rank gets rank ``src``'s ``values`` (same length on every rank)."""
        if self.backend is None or self.world.world_size == 1:
            return list(values)
        fast = getattr(self.backend, "broadcast_ints", None)
        if fast is not None:
            return fast(list(values), src=src)  # type: ignore[no-any-return]
        return list(self.backend.broadcast_object(list(values), src=src))

    def barrier(self) -> None:
        if self.backend is not None and self.world.world_size > 1:
            self.backend.barrier()

    def all_reduce_mean(self, values: Mapping[str, float]) -> dict[str, float]:
        reduce = getattr(self.backend, "all_reduce_mean", None)
        if reduce is None or self.world.world_size == 1:
            return {k: float(v) for k, v in values.items()}
        return reduce(dict(values))  # type: ignore[no-any-return]


# -- reporting sub-context --------------------------------------------------------------


class Reporting(Protocol):
    """Where the chief's reports go, and what the control plane asked of the trial."""

    last_step: int | None

    def report(self, step: int, metrics: Mapping[str, float]) -> None: ...

    def hold(self, step: int, metrics: Mapping[str, float]) -> None: ...

    def emit(self, report: Report) -> None: ...

    def agree_stop(self, dist: DistributedContext) -> bool:
        """``ctx.should_stop()``: whether to stop, the same answer on every rank."""
        ...

    @property
    def stop_requested(self) -> bool: ...

    @property
    def pause_requested(self) -> bool: ...


class LocalReporting:
    """Keeps reports in memory and logs them; ``request_stop`` plays the control plane."""

    def __init__(self, *, log: logging.Logger) -> None:
        self.reports: list[Report] = []
        self.last_step: int | None = None
        self._log = log
        self._stop = False
        self._pause = False

    def report(self, step: int, metrics: Mapping[str, float]) -> None:
        clean = {str(k): float(v) for k, v in metrics.items()}
        self.reports.append(Report(kind="metrics", step=int(step), time=float(step), metrics=clean))
        self.last_step = int(step)
        self._log.info("step %d: %s", step, clean)

    def hold(self, step: int, metrics: Mapping[str, float]) -> None:
        return None

    def emit(self, report: Report) -> None:
        self.reports.append(report)

    def agree_stop(self, dist: DistributedContext) -> bool:
        return bool(dist.broadcast_ints([int(self._stop)])[0])

    def request_stop(self, *, pause: bool = False) -> None:
        self._stop = True
        self._pause = self._pause or pause

    @property
    def stop_requested(self) -> bool:
        return self._stop

    @property
    def pause_requested(self) -> bool:
        return self._pause


# -- checkpoint sub-context -------------------------------------------------------------


class CheckpointStore(Protocol):
    """The part of ``resolute.runtime.storage.ExperimentStorage`` that checkpoints need."""

    def save_checkpoint(self, trial_id: int, name: str, src_dir: Path) -> str: ...

    def load_checkpoint(self, uri: str, dest_dir: Path) -> Path: ...


class DirectoryCheckpointStore:
    """Local stand-in: checkpoints are directories under ``root``, published atomically."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def save_checkpoint(self, trial_id: int, name: str, src_dir: Path) -> str:
        final = self.root / f"trial-{trial_id}" / name
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.parent / f".{name}.tmp-{uuid.uuid4().hex[:8]}"
        shutil.copytree(src_dir, tmp)
        os.replace(tmp, final)
        return str(final)

    def load_checkpoint(self, uri: str, dest_dir: Path) -> Path:
        src = Path(uri)
        if not src.is_dir():
            from resolute.errors import NotFound

            raise NotFound(f"checkpoint {uri} does not exist; check the path or the trial id")
        dest = Path(dest_dir) / src.name
        if dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(src, dest)
        return dest


class CheckpointContext:
    """Saves through a ``CheckpointStore`` (rank 0 only) and knows which checkpoint a run
    starts from: its own latest, else ``restore_from`` (resume, restart, PBT donor)."""

    def __init__(
        self,
        *,
        store: CheckpointStore,
        trial_id: int,
        restore_from: str | None,
        scratch_dir: Path,
    ) -> None:
        self._store = store
        self._trial_id = trial_id
        self.restore_from = restore_from
        self.latest: str | None = None
        self._scratch = Path(scratch_dir)

    def save(self, state: Mapping[str, Any] | Path | str, *, step: int) -> str:
        self._scratch.mkdir(parents=True, exist_ok=True)
        name = f"step{step:09d}-{uuid.uuid4().hex[:8]}"
        with tempfile.TemporaryDirectory(dir=self._scratch, prefix="save-") as tmp:
            src = Path(tmp) / name
            if isinstance(state, (str, Path)):
                shutil.copytree(Path(state), src)
            else:
                import torch

                src.mkdir()
                torch.save(dict(state), src / STATE_FILE)
            uri = self._store.save_checkpoint(self._trial_id, name, src)
        self.latest = uri
        return uri

    def load(self) -> dict[str, Any] | Path | None:
        uri = self.latest or self.restore_from
        if uri is None:
            return None
        self._scratch.mkdir(parents=True, exist_ok=True)
        dest = Path(tempfile.mkdtemp(dir=self._scratch, prefix="load-"))
        path = self._store.load_checkpoint(uri, dest)
        state_file = path / STATE_FILE
        if state_file.is_file():
            import torch

            # Our own checkpoint from our own storage: full unpickling is intended.
            loaded: dict[str, Any] = torch.load(state_file, map_location="cpu", weights_only=False)
            shutil.rmtree(dest, ignore_errors=True)
            return loaded
        return path
