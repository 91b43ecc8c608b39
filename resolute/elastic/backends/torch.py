"""torch.distributed backend: gloo on CPU, NCCL when the slot has a GPU.

Rank 0 opens a ``TCPStore`` server on a free port in ``rendezvous_info`` (so the port is
never raced for: the OS picks it and the socket stays bound), the other ranks connect to it
in ``setup``. A new store and a new port are used at every generation, so a re-formation
never meets keys left over from the previous world.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from resolute.elastic.backends.base import WorldInfo

# Collectives may legitimately wait a long time: the chief blocks in report() while the
# searcher decides, and the other ranks wait for it inside their next collective. A peer that
# dies closes its sockets, which gloo reports within milliseconds whatever this timeout is;
# a peer that hangs is found by the group's supervisor, not by this timeout.
COLLECTIVE_TIMEOUT_S = float(os.environ.get("RESOLUTE_COLLECTIVE_TIMEOUT_S", "3600"))


def node_ip_address() -> str:
    import ray

    return str(ray.util.get_node_ip_address())  # type: ignore[no-untyped-call]


class DistributedLoader:
    """A ``DataLoader`` over a ``DistributedSampler`` that moves to the next epoch by itself.

    Each ``iter(loader)`` starts a new epoch (``sampler.set_epoch(n)``), so every epoch
    shuffles differently while all ranks agree on the order. Call ``set_epoch(e)`` before
    iterating to choose the epoch explicitly (e.g. after resuming from a checkpoint).
    """

    def __init__(self, loader: DataLoader[Any], sampler: DistributedSampler[Any]) -> None:
        self.loader = loader
        self.sampler = sampler
        self._next_epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self._next_epoch = epoch

    def __iter__(self) -> Any:
        self.sampler.set_epoch(self._next_epoch)
        self._next_epoch += 1
        return iter(self.loader)

    def __len__(self) -> int:
        return len(self.loader)


class TorchBackend:
    """One per worker process; see ``resolute.elastic.backends.base.Backend``."""

    name = "torch"

    def __init__(self) -> None:
        self._server_store: Any = None
        self._server_generation: int | None = None
        self._world: WorldInfo | None = None

    # -- forming and leaving the group -------------------------------------------------

    def rendezvous_info(self, *, world_size: int, generation: int) -> dict[str, Any]:
        self._close_server_store()
        self._server_generation = generation
        if world_size == 1:
            # Nobody else connects: an in-process store, no server socket (~1.5 ms less).
            self._server_store = dist.HashStore()  # type: ignore[attr-defined]
            return {"master_addr": node_ip_address(), "master_port": 0}
        store = dist.TCPStore(  # type: ignore[attr-defined]
            host_name="0.0.0.0",
            port=0,
            world_size=world_size,
            is_master=True,
            timeout=timedelta(seconds=120),
            wait_for_workers=False,
        )
        self._server_store = store
        return {"master_addr": node_ip_address(), "master_port": int(store.port)}

    def setup(self, world: WorldInfo) -> None:
        if dist.is_initialized():
            self.teardown()
        timeout = timedelta(seconds=world.timeout_s)
        if world.rank == 0:
            if self._server_store is None or self._server_generation != world.generation:
                raise RuntimeError(
                    "rank 0 must call rendezvous_info() for this generation before setup()"
                )
            store: Any = self._server_store
        else:
            store = dist.TCPStore(  # type: ignore[attr-defined]
                host_name=str(world.rendezvous["master_addr"]),
                port=int(world.rendezvous["master_port"]),
                world_size=world.world_size,
                is_master=False,
                timeout=timeout,
            )
        use_nccl = world.use_gpu and torch.cuda.is_available()
        if use_nccl:
            torch.cuda.set_device(self.device_for(world))
        dist.init_process_group(
            backend="nccl" if use_nccl else "gloo",
            store=store,
            rank=world.rank,
            world_size=world.world_size,
            timeout=timedelta(seconds=max(COLLECTIVE_TIMEOUT_S, world.timeout_s)),
        )
        self._world = world
        # Every rank has connected once init_process_group returns; a barrier makes sure
        # the full mesh is up before user code's first collective.
        if world.world_size > 1:
            self.barrier()

    def teardown(self) -> None:
        if dist.is_initialized():
            old = [dist.group.WORLD] if dist.get_backend() == "gloo" else []
            # A broken group may fail to close; it is gone either way.
            with contextlib.suppress(Exception):
                dist.destroy_process_group()
            if old:
                _drop_later(old)
        self._world = None
        self._close_server_store()

    def _close_server_store(self) -> None:
        self._server_store = None
        self._server_generation = None

    # -- what user code calls through the context -----------------------------------------

    @staticmethod
    def device_for(world: WorldInfo) -> torch.device:
        if not (world.use_gpu and torch.cuda.is_available()):
            return torch.device("cpu")
        # Ray gives each GPU actor its own CUDA_VISIBLE_DEVICES, so the slot's GPU is cuda:0;
        # without that isolation, ranks on one node share the list and pick by local rank.
        return torch.device("cuda", world.local_rank % torch.cuda.device_count())

    @property
    def device(self) -> torch.device:
        return self.device_for(self._require_world())

    def _require_world(self) -> WorldInfo:
        if self._world is None:
            raise RuntimeError("the process group is not formed (setup() was not called)")
        return self._world

    def prepare_model(self, model: Any) -> Any:
        world = self._require_world()
        device = self.device_for(world)
        model = model.to(device)
        if world.world_size == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel

        if device.type == "cuda":
            return DistributedDataParallel(model, device_ids=[device.index])
        return DistributedDataParallel(model)

    def prepare_optimizer(self, optimizer: Any, model: Any) -> Any:
        # DDP averages gradients inside backward(); the optimizer itself needs no wrapper.
        return optimizer

    def prepare_loader(
        self, dataset: Any, *, batch_size: int, shuffle: bool, seed: int, **kwargs: Any
    ) -> Any:
        world = self._require_world()
        ds: Dataset[Any] = dataset
        sampler: DistributedSampler[Any] = DistributedSampler(
            ds,
            num_replicas=world.world_size,
            rank=world.rank,
            shuffle=shuffle,
            seed=seed,
            drop_last=bool(kwargs.pop("drop_last", False)),
        )
        loader: DataLoader[Any] = DataLoader(ds, batch_size=batch_size, sampler=sampler, **kwargs)
        return DistributedLoader(loader, sampler)

    def broadcast_object(self, obj: Any, *, src: int = 0) -> Any:
        world = self._require_world()
        if world.world_size == 1:
            return obj
        box = [obj]
        device = self.device_for(world) if world.use_gpu else None
        dist.broadcast_object_list(box, src=src, device=device)
        return box[0]

    def broadcast_ints(self, values: list[int], *, src: int = 0) -> list[int]:
        """Broadcast a few integers as one tensor: the per-step control signals (stop,
        re-form) without ``broadcast_object``'s pickling and two round trips."""
        world = self._require_world()
        if world.world_size == 1:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.int64)
        if world.use_gpu and torch.cuda.is_available():
            tensor = tensor.to(self.device_for(world))
        dist.broadcast(tensor, src=src)
        return [int(v) for v in tensor.tolist()]

    def barrier(self) -> None:
        world = self._require_world()
        if world.world_size == 1:
            return
        if world.use_gpu and torch.cuda.is_available():
            dist.barrier(device_ids=[self.device_for(world).index])
        else:
            dist.barrier()

    def all_reduce_mean(self, values: dict[str, float]) -> dict[str, float]:
        """Average scalar metrics over ranks (one collective for the whole dict)."""
        world = self._require_world()
        if world.world_size == 1 or not values:
            return dict(values)
        keys = sorted(values)
        tensor = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
        if world.use_gpu and torch.cuda.is_available():
            tensor = tensor.to(self.device_for(world))
        dist.all_reduce(tensor)
        tensor /= world.world_size
        return {k: float(v) for k, v in zip(keys, tensor.tolist(), strict=True)}


def is_collective_failure(exc: BaseException) -> bool:
    """True when ``exc`` says a peer left (closed socket, reset, store gone): the group may
    re-form. False for anything else, which is the user's code failing."""
    if isinstance(exc, dist.DistError):
        return True
    if not isinstance(exc, RuntimeError):
        return False
    text = str(exc)
    markers = (
        "gloo",
        "Connection closed by peer",
        "Connection reset",
        "Broken pipe",
        "NCCL",
        "ProcessGroup",
        "Socket Timeout",
    )
    return any(m in text for m in markers)


# A gloo process group's destructor joins its worker threads: ~10 ms, paid by whoever drops
# the last reference. Dropped on a thread of its own instead, so that a trial's end (and the
# next trial's start on this worker, or a re-formation) does not wait for it.
_graveyard: queue.SimpleQueue[list[Any]] = queue.SimpleQueue()
_digger: threading.Thread | None = None
_digger_lock = threading.Lock()


def _drop_later(box: list[Any]) -> None:
    """Hand the caller's only reference (in ``box``) to the background thread."""
    global _digger
    with _digger_lock:
        if _digger is None or not _digger.is_alive():
            _digger = threading.Thread(target=_dig, name="resolute-pg-reaper", daemon=True)
            _digger.start()
    _graveyard.put(box)


def _dig() -> None:
    while True:
        box = _graveyard.get()
        box.clear()  # the process group's destructor runs here
