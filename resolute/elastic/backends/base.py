"""The contract between a worker group and a data-parallel backend (torch DDP, Horovod).

One ``Backend`` instance lives in each worker process. The group forms (or re-forms after a
resize) by calling, on rank 0 first, ``rendezvous_info`` to get what the other ranks need to
meet (address, port, ...), then ``setup`` on every rank with that info. On a membership
change every surviving rank calls ``teardown`` and then ``setup`` again with the new
world; new ranks only call ``setup``.

A backend may also define ``preload()``: the worker calls it while it warms, before it joins
a group, to import what ``setup`` would otherwise import while the group waits for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class WorldInfo:
    """Who this rank is in the current generation of the group."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    node_rank: int
    num_nodes: int
    generation: int  # increases by one at every re-formation
    rendezvous: dict[str, Any] = field(default_factory=dict)  # from rank 0's rendezvous_info()
    use_gpu: bool = False
    timeout_s: float = 60.0


class Backend(Protocol):
    name: str

    def rendezvous_info(self, *, world_size: int, generation: int) -> dict[str, Any]:
        """Called on the rank-0 process before setup; returns what every rank needs to meet
        (for torch: master address and a free port; for Horovod: the Gloo rendezvous server's
        address and port, the server started here)."""
        ...

    def setup(self, world: WorldInfo) -> None:
        """Form the process group for ``world``. Blocks until every rank has joined."""
        ...

    def teardown(self) -> None:
        """Leave the current process group (before a re-formation or at trial end)."""
        ...

    def prepare_model(self, model: Any) -> Any: ...

    def prepare_optimizer(self, optimizer: Any, model: Any) -> Any: ...

    def prepare_loader(
        self, dataset: Any, *, batch_size: int, shuffle: bool, seed: int, **kwargs: Any
    ) -> Any: ...

    def broadcast_object(self, obj: Any, *, src: int = 0) -> Any: ...

    def barrier(self) -> None: ...


def is_collective_failure(exc: BaseException) -> bool:
    """True when ``exc`` says a collective failed because a peer left, on either backend
    (gloo/NCCL errors of torch.distributed, ``HorovodInternalError``): the group may
    re-form. False for anything else, which is the user's code failing."""
    from resolute.elastic.backends import horovod
    from resolute.elastic.backends.torch import is_collective_failure as torch_failure

    return torch_failure(exc) or horovod.is_collective_failure(exc)
