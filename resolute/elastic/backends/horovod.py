"""Horovod data-parallel backend: Gloo collectives, rendezvous run by resolute.

resolute does not use ``horovodrun`` or Horovod's elastic driver: the worker group already
knows who is in the world, so rank 0 starts Horovod's own Gloo rendezvous HTTP server
(``RendezvousServer``) and every rank is handed the ``HOROVOD_*`` environment that
``horovodrun``'s Gloo launcher would have set, then calls ``hvd.init()``. A re-formation is
``hvd.shutdown()`` followed by ``hvd.init()`` with the new environment, in the same process.

Horovod is imported lazily so that resolute imports without it; build it with
``scripts/build-horovod.sh``.
"""

from __future__ import annotations

import math
import os
import pickle
import weakref
from typing import Any

from resolute.elastic.backends.base import WorldInfo
from resolute.elastic.backends.horovod_rendezvous import (
    KVClient,
    gather_layout,
    iface_for,
    node_ip,
    rendezvous_server,
)
from resolute.errors import HorovodError

_INSTALL_HINT = "build and install it with scripts/build-horovod.sh"
DEFAULT_COLLECTIVE_TIMEOUT_S = 30.0

# Set by us on every setup; cleared on teardown so a later torch backend in the same
# process does not inherit a stale Horovod world.
_WORLD_ENV = (
    "HOROVOD_GLOO_RENDEZVOUS_ADDR",
    "HOROVOD_GLOO_RENDEZVOUS_PORT",
    "HOROVOD_CONTROLLER",
    "HOROVOD_CPU_OPERATIONS",
    "HOROVOD_HOSTNAME",
    "HOROVOD_RANK",
    "HOROVOD_SIZE",
    "HOROVOD_LOCAL_RANK",
    "HOROVOD_LOCAL_SIZE",
    "HOROVOD_CROSS_RANK",
    "HOROVOD_CROSS_SIZE",
    "HOROVOD_GLOO_TIMEOUT_SECONDS",
)


# Every DistributedOptimizer wrapper this process made, by the optimizer it wraps: calling
# prepare_optimizer again (each generation, say) must not stack a second set of gradient
# hooks on the same parameters.
_wrappers: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
_live_wrappers: weakref.WeakSet[Any] = weakref.WeakSet()


def _import_hvd() -> Any:
    try:
        import horovod.torch as hvd
    except ImportError as exc:
        raise HorovodError(
            f"backend 'horovod' needs Horovod with PyTorch support, which is not importable "
            f"({exc}); {_INSTALL_HINT}, or use backend: torch"
        ) from exc
    return hvd


def horovod_available() -> bool:
    """True when ``horovod.torch`` imports (the wheel from scripts/build-horovod.sh)."""
    try:
        _import_hvd()
    except HorovodError:
        return False
    return True


def is_collective_failure(exc: BaseException) -> bool:
    """True when ``exc`` is Horovod reporting that a collective failed (a peer left or the
    world was shut down under it): the group may re-form. Anything else is user code."""
    try:
        from horovod.common.exceptions import HorovodInternalError
    except ImportError:
        return False
    return isinstance(exc, HorovodInternalError)


def _is_horovod_wrapper(optimizer: Any) -> bool:
    # hvd.DistributedOptimizer builds a new class from the optimizer's own class and
    # _DistributedOptimizer's methods; it is not a subclass of _DistributedOptimizer.
    from horovod.torch.optimizer import _DistributedOptimizer

    step = type(optimizer).__dict__.get("synchronize")
    return optimizer in _live_wrappers or step is _DistributedOptimizer.__dict__["synchronize"]


def _reset_pending_allreduces(optimizer: Any) -> None:
    """Forget gradient allreduces started in a world that is gone (a peer died mid-backward):
    Horovod's ``zero_grad`` refuses to run while any is pending. Same reset as the wrapper's
    own ``load_state_dict``."""
    optimizer._handles = {}
    optimizer._synchronized = False
    optimizer._should_synchronize = True
    for p in optimizer._allreduce_delay:
        optimizer._allreduce_delay[p] = optimizer.backward_passes_per_step


class HorovodBackend:
    """One per worker process; see ``resolute.elastic.backends.base.Backend``."""

    name = "horovod"

    def __init__(self, *, collective_timeout_s: float | None = None, verbose: bool = False) -> None:
        """``collective_timeout_s`` bounds how long a collective waits on a silent peer, so
        it is how fast a lost rank is noticed (default: $RESOLUTE_HOROVOD_TIMEOUT_S or 30).
        Horovod's background threads exchange messages every few milliseconds even while
        user code is busy or blocked, so only a dead or frozen process trips it."""
        if collective_timeout_s is None:
            collective_timeout_s = float(
                os.environ.get("RESOLUTE_HOROVOD_TIMEOUT_S", DEFAULT_COLLECTIVE_TIMEOUT_S)
            )
        self._collective_timeout_s = collective_timeout_s
        self._verbose = verbose
        self._world: WorldInfo | None = None
        self._hvd: Any = None
        self._iface_set_by_us = False  # a user's HOROVOD_GLOO_IFACE is theirs to keep

    # --- forming and leaving the world ------------------------------------------------------

    def preload(self) -> None:
        """Import Horovod's compiled library now (the worker is warming), not in the first
        ``setup``, which a rank joining a running group reaches while the group is paused."""
        _import_hvd()

    def rendezvous_info(self, *, world_size: int, generation: int) -> dict[str, Any]:
        if world_size < 1:
            raise HorovodError(f"world_size must be at least 1, got {world_size}")
        _import_hvd()  # fail here, on rank 0, before any rank waits on a server
        server, port = rendezvous_server(self._verbose)
        # A fresh generation starts from an empty store: keys left by an earlier, possibly
        # aborted, rendezvous must not be read as this one's. Scopes are left "ad hoc" (no
        # host plan), so the server drops each key as its rank finishes connecting.
        server.init([])
        return {
            "addr": node_ip(),
            "port": port,
            "world_size": world_size,
            "generation": generation,
        }

    def setup(self, world: WorldInfo) -> None:
        hvd = _import_hvd()
        if self._world is not None:
            self.teardown()
        try:
            addr = str(world.rendezvous["addr"])
            port = int(world.rendezvous["port"])
        except (KeyError, TypeError, ValueError) as exc:
            raise HorovodError(
                f"rendezvous info {world.rendezvous!r} lacks addr/port; pass rank 0's "
                f"HorovodBackend.rendezvous_info() result as WorldInfo.rendezvous"
            ) from exc
        if world.use_gpu and not hvd.nccl_built():
            raise HorovodError(
                "use_gpu is set but this Horovod build has no NCCL (scripts/build-horovod.sh "
                "builds CPU/Gloo only); rebuild with HOROVOD_GPU_OPERATIONS=NCCL on a CUDA "
                "machine, or use backend: torch for GPU trials"
            )

        cross_rank, cross_size = gather_layout(world, KVClient(addr, port))
        env = {
            "HOROVOD_GLOO_RENDEZVOUS_ADDR": addr,
            "HOROVOD_GLOO_RENDEZVOUS_PORT": str(port),
            "HOROVOD_CONTROLLER": "gloo",
            "HOROVOD_CPU_OPERATIONS": "gloo",
            # Ranks on one node must share a hostname (Horovod's local scope); node_rank is
            # the group's own notion of "same node", real hostnames may collide or differ.
            "HOROVOD_HOSTNAME": f"resolute-node-{world.node_rank}",
            "HOROVOD_RANK": str(world.rank),
            "HOROVOD_SIZE": str(world.world_size),
            "HOROVOD_LOCAL_RANK": str(world.local_rank),
            "HOROVOD_LOCAL_SIZE": str(world.local_world_size),
            "HOROVOD_CROSS_RANK": str(cross_rank),
            "HOROVOD_CROSS_SIZE": str(cross_size),
            "HOROVOD_GLOO_TIMEOUT_SECONDS": str(max(1, math.ceil(self._collective_timeout_s))),
        }
        os.environ.update(env)
        # Elastic mode would make hvd.init() ask a Horovod elastic driver for its rank.
        os.environ.pop("HOROVOD_ELASTIC", None)
        if self._iface_set_by_us or "HOROVOD_GLOO_IFACE" not in os.environ:
            iface = iface_for(node_ip())
            if iface is not None:
                os.environ["HOROVOD_GLOO_IFACE"] = iface
                self._iface_set_by_us = True

        hvd.init()
        if hvd.size() != world.world_size or hvd.rank() != world.rank:
            got = (hvd.rank(), hvd.size())
            hvd.shutdown()
            raise HorovodError(
                f"Horovod formed rank/size {got}, expected {(world.rank, world.world_size)}; "
                f"another Horovod world is active in this process: call teardown() first"
            )
        if world.use_gpu:
            import torch

            torch.cuda.set_device(self.device_for(world))
        for wrapper in list(_live_wrappers):
            _reset_pending_allreduces(wrapper)
        self._hvd = hvd
        self._world = world

    def teardown(self) -> None:
        if self._world is None:
            return
        self._hvd.shutdown()
        self._world = None
        for key in _WORLD_ENV:
            os.environ.pop(key, None)
        if self._iface_set_by_us:
            os.environ.pop("HOROVOD_GLOO_IFACE", None)
            self._iface_set_by_us = False

    @staticmethod
    def is_collective_failure(exc: BaseException) -> bool:
        return is_collective_failure(exc)

    # --- training helpers -------------------------------------------------------------------

    def _require_world(self) -> Any:
        if self._world is None:
            raise HorovodError(
                "the Horovod backend is not set up; call setup(world) before using it"
            )
        return self._hvd

    @staticmethod
    def device_for(world: WorldInfo) -> Any:
        import torch

        if not (world.use_gpu and torch.cuda.is_available()):
            return torch.device("cpu")
        # Ray gives each GPU actor its own CUDA_VISIBLE_DEVICES: the slot's GPU is cuda:0.
        return torch.device("cuda", world.local_rank % torch.cuda.device_count())

    def prepare_model(self, model: Any) -> Any:
        """Move the model to this rank's device and make every rank start from rank 0's
        parameters and buffers. Unlike DDP the model is not wrapped: gradients are averaged
        by the optimizer that ``prepare_optimizer`` returns."""
        hvd = self._require_world()
        assert self._world is not None
        model = model.to(self.device_for(self._world))
        hvd.broadcast_parameters(model.state_dict(), root_rank=0)
        return model

    def prepare_optimizer(self, optimizer: Any, model: Any) -> Any:
        """Return ``hvd.DistributedOptimizer`` over ``optimizer``: gradients are averaged
        over ranks in ``step`` (``model`` names them; None gives Horovod's own names). Call it once, before ``ctx.elastic_state(optimizer=...)``,
        and keep what it returns (the wrapper holds its own optimizer state); it survives
        re-formations, and calling this again returns the same wrapper.

        In a group's first generation every rank runs the user code from its start, so
        parameters and (non-empty) optimizer state are broadcast from rank 0 here. After a
        re-formation ranks are at different places (newcomers at the top of the function,
        survivors inside the elastic loop), so no collective may run here: the elastic
        state's sync has already given everyone the chief's model and optimizer."""
        hvd = self._require_world()
        wrapper = optimizer if _is_horovod_wrapper(optimizer) else _wrappers.get(optimizer)
        if wrapper is None:
            # Horovod registers its gradient hooks only when size() > 1 or in elastic mode;
            # a group that starts with one rank and grows later needs them from the start.
            previous = os.environ.get("HOROVOD_ELASTIC")
            os.environ["HOROVOD_ELASTIC"] = "1"
            try:
                named = model.named_parameters() if model is not None else None
                wrapper = hvd.DistributedOptimizer(optimizer, named_parameters=named)
            finally:
                if previous is None:
                    os.environ.pop("HOROVOD_ELASTIC", None)
                else:
                    os.environ["HOROVOD_ELASTIC"] = previous
            _wrappers[optimizer] = wrapper
            _live_wrappers.add(wrapper)
        assert self._world is not None
        if self._world.generation == 0:
            if model is not None:
                hvd.broadcast_parameters(model.state_dict(), root_rank=0)
            # Horovod would initialise an empty state with a zero-gradient step, which
            # changes e.g. Adam's step count: only broadcast a state rank 0 actually has
            # (one restored from a checkpoint).
            if hvd.broadcast_object(bool(wrapper.state_dict()["state"]), root_rank=0):
                hvd.broadcast_optimizer_state(wrapper, root_rank=0)
        return wrapper

    def prepare_loader(
        self, dataset: Any, *, batch_size: int, shuffle: bool, seed: int, **kwargs: Any
    ) -> Any:
        """This rank's shard, as the torch backend gives it: ``batch_size`` is per rank,
        ``drop_last`` goes to the sampler, each ``iter()`` starts the next epoch."""
        hvd = self._require_world()
        from torch.utils.data import DataLoader
        from torch.utils.data.distributed import DistributedSampler

        from resolute.elastic.backends.torch import DistributedLoader

        sampler: DistributedSampler[Any] = DistributedSampler(
            dataset,
            num_replicas=hvd.size(),
            rank=hvd.rank(),
            shuffle=shuffle,
            seed=seed,
            drop_last=bool(kwargs.pop("drop_last", False)),
        )
        loader: DataLoader[Any] = DataLoader(
            dataset, batch_size=batch_size, sampler=sampler, **kwargs
        )
        return DistributedLoader(loader, sampler)

    def broadcast_object(self, obj: Any, *, src: int = 0) -> Any:
        """``obj`` from rank ``src`` to every rank: its pickle's length, then the bytes, as
        two broadcasts. Not ``hvd.broadcast_object``, which builds its byte tensor element
        by element from the pickle (about a second for a few MB of model state, paid while
        a re-formed group waits) and names its collectives after the object's type (a
        chief sending a dict to ranks holding None would wait forever)."""
        hvd = self._require_world()
        import cloudpickle
        import torch

        root = hvd.rank() == src
        data = bytearray(cloudpickle.dumps(obj)) if root else bytearray()
        size = torch.tensor([len(data)], dtype=torch.int64)
        hvd.broadcast_(size, root_rank=src, name="resolute.broadcast_object.size")
        buffer = (
            torch.frombuffer(data, dtype=torch.uint8)
            if root
            else torch.empty(int(size.item()), dtype=torch.uint8)
        )
        hvd.broadcast_(buffer, root_rank=src, name="resolute.broadcast_object.data")
        if root:
            return obj
        return pickle.loads(buffer.numpy().tobytes())

    def barrier(self) -> None:
        self._require_world().barrier()

    def all_reduce_mean(self, values: dict[str, float]) -> dict[str, float]:
        """Average scalar metrics over ranks (one collective for the whole dict)."""
        hvd = self._require_world()
        if not values:
            return {}
        import torch

        keys = sorted(values)
        tensor = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
        mean = hvd.allreduce(tensor, op=hvd.Average, name="resolute.all_reduce_mean")
        return {k: float(v) for k, v in zip(keys, mean.tolist(), strict=True)}

    def allreduce(self, value: Any, *, average: bool = True) -> Any:
        """Allreduce a tensor over the world (sum, or mean when ``average``)."""
        hvd = self._require_world()
        return hvd.allreduce(value, op=hvd.Average if average else hvd.Sum)
