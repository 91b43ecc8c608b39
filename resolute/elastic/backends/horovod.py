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

import json
import math
import os
import socket
import time
import urllib.error
import urllib.request
from typing import Any

from resolute.elastic.backends.base import WorldInfo
from resolute.errors import HorovodError

_INSTALL_HINT = "build and install it with scripts/build-horovod.sh"

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


def _node_ip() -> str:
    """The address other nodes reach this one at: Ray's view when inside Ray."""
    try:
        import ray

        if ray.is_initialized():
            return str(ray.util.get_node_ip_address())  # type: ignore[no-untyped-call]
    except ImportError:
        pass
    # Outside Ray: the address of the interface that routes outward (no packet is sent).
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("10.255.255.255", 1))
            return str(probe.getsockname()[0])
        except OSError:
            return "127.0.0.1"


def _iface_for(ip: str) -> str | None:
    """The network interface holding ``ip``. Gloo otherwise binds to whatever the hostname
    resolves to, which in containers is often a loopback address other nodes cannot reach."""
    import psutil

    for name, addrs in psutil.net_if_addrs().items():
        if any(a.family == socket.AF_INET and a.address == ip for a in addrs):
            return str(name)
    return None


class _KV:
    """Minimal client of the rendezvous server's key-value scopes (raw bytes, JSON)."""

    def __init__(self, addr: str, port: int) -> None:
        self._base = f"http://{addr}:{port}"

    def put(self, scope: str, key: str, value: Any) -> None:
        req = urllib.request.Request(
            f"{self._base}/{scope}/{key}", data=json.dumps(value).encode(), method="PUT"
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            resp.read()

    def wait_get(self, scope: str, key: str, *, deadline: float) -> Any:
        delay = 0.005
        while True:
            try:
                with urllib.request.urlopen(f"{self._base}/{scope}/{key}", timeout=10) as resp:
                    return json.loads(resp.read())
            except urllib.error.HTTPError as exc:
                if exc.code != 404:
                    raise
            if time.monotonic() > deadline:
                raise HorovodError(
                    f"Horovod rendezvous timed out waiting for rank {key} in scope {scope}; "
                    f"a rank did not start or cannot reach {self._base}: check that the "
                    f"nodes can reach each other on that port, or raise the group timeout"
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.2)


def _cross_layout(world: WorldInfo, kv: _KV) -> tuple[int, int]:
    """(cross_rank, cross_size) for this rank: its index among the ranks that share its
    local_rank, across nodes. Nodes may hold different numbers of ranks, so this needs
    every rank's (node_rank, local_rank): they are exchanged through the rendezvous server."""
    if world.num_nodes == 1:
        return 0, 1
    scope = f"resolute_layout_g{world.generation}"
    kv.put(scope, str(world.rank), [world.node_rank, world.local_rank])
    deadline = time.monotonic() + world.timeout_s
    layout = [kv.wait_get(scope, str(r), deadline=deadline) for r in range(world.world_size)]
    peers = sorted(node for node, local in layout if local == world.local_rank)
    return peers.index(world.node_rank), len(peers)


class HorovodBackend:
    """One per worker process; see ``resolute.elastic.backends.base.Backend``."""

    name = "horovod"

    def __init__(self, *, verbose: bool = False) -> None:
        self._verbose = verbose
        self._server: Any = None  # horovod.runner.http.http_server.RendezvousServer
        self._server_addr: tuple[str, int] | None = None
        self._world: WorldInfo | None = None
        self._hvd: Any = None
        self._iface_set_by_us = False  # a user's HOROVOD_GLOO_IFACE is theirs to keep

    # --- forming and leaving the world ------------------------------------------------------

    def rendezvous_info(self, *, world_size: int, generation: int) -> dict[str, Any]:
        if world_size < 1:
            raise HorovodError(f"world_size must be at least 1, got {world_size}")
        _import_hvd()  # fail here, on rank 0, before any rank waits on a server
        from horovod.runner.http.http_server import RendezvousServer

        if self._server is None:
            server = RendezvousServer(verbose=int(self._verbose))
            port = server.start()
            self._server = server
            self._server_addr = (_node_ip(), int(port))
        # A fresh generation starts from an empty store: keys left by an earlier, possibly
        # aborted, rendezvous must not be read as this one's. Scopes are left "ad hoc" (no
        # host plan), so the server drops each key as its rank finishes connecting.
        self._server.init([])
        assert self._server_addr is not None
        addr, port = self._server_addr
        return {"addr": addr, "port": port, "world_size": world_size, "generation": generation}

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
        if self._server is not None and self._server_addr != (addr, port):
            # This process served an earlier generation but another rank 0 serves this one.
            self._server.stop()
            self._server = None
            self._server_addr = None
        if world.use_gpu and not hvd.nccl_built():
            raise HorovodError(
                "use_gpu is set but this Horovod build has no NCCL (scripts/build-horovod.sh "
                "builds CPU/Gloo only); rebuild with HOROVOD_GPU_OPERATIONS=NCCL on a CUDA "
                "machine, or use backend: torch for GPU trials"
            )

        cross_rank, cross_size = _cross_layout(world, _KV(addr, port))
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
            "HOROVOD_GLOO_TIMEOUT_SECONDS": str(max(1, math.ceil(world.timeout_s))),
        }
        os.environ.update(env)
        # Elastic mode would make hvd.init() ask a Horovod elastic driver for its rank.
        os.environ.pop("HOROVOD_ELASTIC", None)
        if self._iface_set_by_us or "HOROVOD_GLOO_IFACE" not in os.environ:
            iface = _iface_for(_node_ip())
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

            torch.cuda.set_device(world.local_rank % max(1, torch.cuda.device_count()))
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

    def close(self) -> None:
        """Leave the world and stop this process's rendezvous server (trial end)."""
        self.teardown()
        if self._server is not None:
            self._server.stop()
            self._server = None
            self._server_addr = None

    # --- training helpers -------------------------------------------------------------------

    def _require_world(self) -> Any:
        if self._world is None:
            raise HorovodError(
                "the Horovod backend is not set up; call setup(world) before using it"
            )
        return self._hvd

    def prepare_model(self, model: Any) -> Any:
        """Move the model to this rank's device and make every rank start from rank 0's
        parameters and buffers."""
        hvd = self._require_world()
        assert self._world is not None
        if self._world.use_gpu:
            import torch

            model = model.to(torch.device("cuda", torch.cuda.current_device()))
        hvd.broadcast_parameters(model.state_dict(), root_rank=0)
        return model

    def prepare_optimizer(self, optimizer: Any, model: Any) -> Any:
        """Wrap in ``hvd.DistributedOptimizer`` (gradients averaged over ranks) and sync
        parameters and optimizer state from rank 0. An already wrapped optimizer (a
        re-formation) is not wrapped again: its hooks survive ``hvd.shutdown``/``init``."""
        hvd = self._require_world()
        from horovod.torch.optimizer import _DistributedOptimizer

        if not isinstance(optimizer, _DistributedOptimizer):
            optimizer = hvd.DistributedOptimizer(
                optimizer, named_parameters=model.named_parameters()
            )
        hvd.broadcast_parameters(model.state_dict(), root_rank=0)
        hvd.broadcast_optimizer_state(optimizer, root_rank=0)
        return optimizer

    def prepare_loader(
        self, dataset: Any, *, batch_size: int, shuffle: bool, seed: int, **kwargs: Any
    ) -> Any:
        """A DataLoader over this rank's shard; ``batch_size`` is per rank. ``drop_last``
        applies to both the sampler and the loader; other kwargs go to the DataLoader."""
        hvd = self._require_world()
        from torch.utils.data import DataLoader
        from torch.utils.data.distributed import DistributedSampler

        drop_last = bool(kwargs.pop("drop_last", False))
        sampler: DistributedSampler[Any] = DistributedSampler(
            dataset,
            num_replicas=hvd.size(),
            rank=hvd.rank(),
            shuffle=shuffle,
            seed=seed,
            drop_last=drop_last,
        )
        return DataLoader(
            dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last, **kwargs
        )

    def broadcast_object(self, obj: Any, *, src: int = 0) -> Any:
        hvd = self._require_world()
        return hvd.broadcast_object(obj, root_rank=src)

    def barrier(self) -> None:
        self._require_world().barrier()

    # --- introspection used by tests and the worker -----------------------------------------

    @property
    def world(self) -> WorldInfo | None:
        return self._world

    def allreduce(self, value: Any, *, average: bool = True) -> Any:
        """Allreduce a tensor over the world (sum, or mean when ``average``)."""
        hvd = self._require_world()
        return hvd.allreduce(value, op=hvd.Average if average else hvd.Sum)
