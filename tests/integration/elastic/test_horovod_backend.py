"""The Horovod backend on real Ray actors: Gloo worlds formed through resolute's own
rendezvous, re-formed at a new size in the same processes, and gradient averaging that
matches one process training on the global batch."""

from __future__ import annotations

import sys
import time
from typing import Any

import pytest
from ray import cloudpickle

pytest.importorskip(
    "horovod.torch", reason="Horovod is not installed: run scripts/build-horovod.sh"
)

from resolute.elastic.backends.base import WorldInfo  # noqa: E402
from resolute.elastic.backends.horovod import HorovodBackend  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.horovod]

# pytest imports this file under a name Ray's workers cannot import; ship the actor class
# and its helpers by value instead.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

RAY_TIMEOUT_S = 120
# float64 throughout: the only difference between 2-rank averaging and a 1-process mean is
# summation order, which is ~1e-16 relative; 1e-10 leaves room and still catches any
# real mismatch (a missed average or a wrong shard is off by >1e-3).
EQUIVALENCE_ATOL = 1e-10
LR = 0.1
LOST_PEER_TIMEOUT_S = 5.0  # Horovod's Gloo timeout: how long survivors wait on a dead peer
MOMENTUM = 0.9


def _get(refs: Any) -> Any:
    """ray.get that fails a test instead of hanging it (a rank stuck in a collective)."""
    import ray

    return ray.get(refs, timeout=RAY_TIMEOUT_S)


def _make_model(seed: int) -> Any:
    import torch

    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)
    ).double()


def _make_dataset() -> Any:
    import torch

    gen = torch.Generator().manual_seed(1234)
    x = torch.randn(16, 4, generator=gen, dtype=torch.float64)
    y = torch.randn(16, 1, generator=gen, dtype=torch.float64)
    return torch.utils.data.TensorDataset(x, y)


class _Rank:
    """A worker process holding one HorovodBackend, as the worker actor would."""

    def __init__(self) -> None:
        self.backend = HorovodBackend(collective_timeout_s=LOST_PEER_TIMEOUT_S)

    def rendezvous_info(self, world_size: int, generation: int) -> dict[str, Any]:
        return self.backend.rendezvous_info(world_size=world_size, generation=generation)

    def setup(self, world: WorldInfo) -> dict[str, int]:
        import os

        import horovod.torch as hvd

        self.backend.setup(world)
        return {
            "pid": os.getpid(),
            "rank": hvd.rank(),
            "size": hvd.size(),
            "local_rank": hvd.local_rank(),
            "local_size": hvd.local_size(),
            "cross_rank": hvd.cross_rank(),
            "cross_size": hvd.cross_size(),
        }

    def allreduce_sum(self, value: float) -> float:
        import torch

        out = self.backend.allreduce(torch.tensor([value], dtype=torch.float64), average=False)
        return float(out.item())

    def broadcast(self, obj: Any, src: int) -> Any:
        return self.backend.broadcast_object(obj, src=src)

    def barrier(self) -> bool:
        self.backend.barrier()
        return True

    def teardown(self) -> None:
        self.backend.teardown()

    def train(self, steps: int, init_seed: int) -> dict[str, Any]:
        """``steps`` SGD+momentum steps on this rank's shard; rank-specific initial weights
        so that only prepare_model's broadcast can make the ranks agree."""
        import torch

        model = self.backend.prepare_model(_make_model(init_seed))
        opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
        opt = self.backend.prepare_optimizer(opt, model)
        loader = self.backend.prepare_loader(_make_dataset(), batch_size=4, shuffle=False, seed=0)
        seen: list[list[float]] = []
        for step, (x, y) in enumerate(loader):
            if step == steps:
                break
            seen.append(y.flatten().tolist())
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(x), y).backward()
            opt.step()
        return {
            "params": [p.detach().clone() for p in model.parameters()],
            "targets_seen": seen,
        }

    def build(self, init_seed: int) -> None:
        """A model and its prepared optimizer that live across re-formations, as in an
        elastic trial."""
        import torch

        self.model = self.backend.prepare_model(_make_model(init_seed))
        opt = torch.optim.SGD(self.model.parameters(), lr=LR, momentum=MOMENTUM)
        self.opt = self.backend.prepare_optimizer(opt, self.model)

    def reprepare(self) -> bool:
        """prepare_* again in a new world; True when the same wrapper came back."""
        self.model = self.backend.prepare_model(self.model)
        again = self.backend.prepare_optimizer(self.opt, self.model)
        same = again is self.opt
        self.opt = again
        return same

    def step_on(self, batch: slice) -> list[Any]:
        import torch

        x, y = _make_dataset().tensors
        self.opt.zero_grad()
        torch.nn.functional.mse_loss(self.model(x[batch]), y[batch]).backward()
        self.opt.step()
        return [p.detach().clone() for p in self.model.parameters()]

    def mean_metrics(self, values: dict[str, float]) -> dict[str, float]:
        return self.backend.all_reduce_mean(values)

    def allreduce_expecting_failure(self) -> tuple[bool, str]:
        import torch

        from resolute.elastic.backends.horovod import is_collective_failure

        try:
            self.backend.allreduce(torch.ones(1))
        except Exception as exc:
            # Leave at once, as the worker does: closing our side is what lets a peer that
            # waits on us (not on the dead rank) fail fast too.
            self.backend.teardown()
            return is_collective_failure(exc), f"{type(exc).__name__}: {exc}"
        return False, "allreduce succeeded without its peer"

    def shard(self, shuffle: bool, seed: int) -> list[int]:
        import torch

        indexed = torch.utils.data.TensorDataset(torch.arange(10))
        loader = self.backend.prepare_loader(indexed, batch_size=3, shuffle=shuffle, seed=seed)
        return [int(i) for (batch,) in loader for i in batch]


@pytest.fixture(scope="module")
def _rank_pool(ray_local: Any):
    """Three worker processes shared by this module's tests: starting one (importing torch
    and Horovod) costs seconds, forming a world a fraction of one. Reuse across tests is
    also what a worker group does with reuse_workers."""
    remote_rank = ray_local.remote(num_cpus=1)(_Rank)
    pool = [remote_rank.remote() for _ in range(3)]
    yield pool
    for actor in pool:
        ray_local.kill(actor)


@pytest.fixture
def make_ranks(ray_local: Any, _rank_pool: list[Any]):
    def make(n: int) -> list[Any]:
        assert n <= len(_rank_pool), "the pool holds 3 workers"
        return _rank_pool[:n]

    yield make
    # Leave every worker out of any world, whatever the test did, so the next test forms
    # fresh; a worker that cannot leave (stuck in a collective) is replaced.
    for i, actor in enumerate(_rank_pool):
        try:
            ray_local.get(actor.teardown.remote(), timeout=30)
        except Exception:
            ray_local.kill(actor)
            _rank_pool[i] = ray_local.remote(num_cpus=1)(_Rank).remote()


def _form(
    ray: Any,
    members: list[Any],
    generation: int,
    *,
    node_of: list[int] | None = None,
) -> list[dict[str, int]]:
    """Form a world of ``members`` (index = rank) the way a worker group does: rank 0's
    rendezvous_info first, then setup on every rank concurrently."""
    size = len(members)
    info = _get(members[0].rendezvous_info.remote(size, generation))
    node_of = node_of or [0] * size
    num_nodes = len(set(node_of))
    worlds = []
    for rank, node in enumerate(node_of):
        on_node = [r for r, n in enumerate(node_of) if n == node]
        worlds.append(
            WorldInfo(
                rank=rank,
                world_size=size,
                local_rank=on_node.index(rank),
                local_world_size=len(on_node),
                node_rank=node,
                num_nodes=num_nodes,
                generation=generation,
                rendezvous=info,
                timeout_s=60.0,
            )
        )
    return _get([m.setup.remote(w) for m, w in zip(members, worlds, strict=True)])


def _teardown(ray: Any, members: list[Any]) -> None:
    _get([m.teardown.remote() for m in members])


def test_world_forms_then_reforms_at_new_sizes_in_same_processes(ray_local, make_ranks):
    ray = ray_local
    a, b, c = make_ranks(3)

    gen0 = _form(ray, [a, b], generation=0)
    assert [(s["rank"], s["size"]) for s in gen0] == [(0, 2), (1, 2)]
    assert _get([m.allreduce_sum.remote(r + 1.0) for r, m in enumerate([a, b])]) == [3.0, 3.0]
    _teardown(ray, [a, b])

    # Grow to 3 with a different rank 0 (b): its own rendezvous server serves this
    # generation, and a, which served generation 0, now joins b's.
    gen1 = _form(ray, [b, c, a], generation=1)
    assert [(s["rank"], s["size"]) for s in gen1] == [(0, 3), (1, 3), (2, 3)]
    # Same processes as before: the re-formation happened in place (init → shutdown → init).
    assert gen1[2]["pid"] == gen0[0]["pid"] and gen1[0]["pid"] == gen0[1]["pid"]
    members = [b, c, a]
    sums = _get([m.allreduce_sum.remote(10.0 * (r + 1)) for r, m in enumerate(members)])
    assert sums == [60.0, 60.0, 60.0]
    # Only the source holds the object (the others pass None, as an elastic sync does).
    sent = [None, None, {"from": 2, "w": [1.5, 2.5]}]
    got = _get([m.broadcast.remote(sent[r], 2) for r, m in enumerate(members)])
    assert got == [sent[2]] * 3
    assert _get([m.barrier.remote() for m in members]) == [True] * 3
    _teardown(ray, members)

    # Shrink back to 2, rank 0 back on a: its process's rendezvous server, idle during
    # generation 1, serves again from an empty store.
    gen2 = _form(ray, [a, c], generation=2)
    assert [(s["rank"], s["size"]) for s in gen2] == [(0, 2), (1, 2)]
    assert _get([m.allreduce_sum.remote(r + 5.0) for r, m in enumerate([a, c])]) == [
        11.0,
        11.0,
    ]
    _teardown(ray, [a, c])


def test_uneven_multi_node_layout_gets_horovod_local_and_cross_ranks(ray_local, make_ranks):
    """Nodes are Horovod hostnames, so two 'nodes' of uneven size run on one machine: ranks
    0,1 on node 0, rank 2 on node 1. Cross ranks group ranks by local_rank across nodes."""
    ray = ray_local
    members = make_ranks(3)
    layout = _form(ray, members, generation=0, node_of=[0, 0, 1])
    assert [(s["local_rank"], s["local_size"]) for s in layout] == [(0, 2), (1, 2), (0, 1)]
    assert [(s["cross_rank"], s["cross_size"]) for s in layout] == [(0, 2), (0, 1), (1, 2)]
    sums = _get([m.allreduce_sum.remote(float(2**r)) for r, m in enumerate(members)])
    assert sums == [7.0, 7.0, 7.0]
    _teardown(ray, members)


def _reference_params(steps: int) -> list[Any]:
    """One process, same initial weights as rank 0, each step over the global batch the two
    ranks see together (shuffle=False shards: rank r takes samples r, r+2, ...; a global
    step of 2x4 samples is therefore 8 consecutive samples)."""
    import torch

    model = _make_model(0)
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    x, y = _make_dataset().tensors
    for step in range(steps):
        batch = slice(8 * step, 8 * (step + 1))
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x[batch]), y[batch]).backward()
        opt.step()
    return [p.detach().clone() for p in model.parameters()]


def test_two_rank_steps_equal_one_process_on_global_batch(ray_local, make_ranks):
    import torch

    ray = ray_local
    members = make_ranks(2)
    _form(ray, members, generation=0)
    steps = 2  # the second step exercises the broadcast, averaged momentum buffers
    # Different seeds per rank: agreement can only come from rank 0's broadcast.
    out = _get([m.train.remote(steps, init_seed=r * 7) for r, m in enumerate(members)])
    _, y = _make_dataset().tensors
    assert out[0]["targets_seen"][0] == y[0:8:2].flatten().tolist()
    assert out[1]["targets_seen"][0] == y[1:8:2].flatten().tolist()

    for p0, p1 in zip(out[0]["params"], out[1]["params"], strict=True):
        assert torch.equal(p0, p1), "ranks diverged after identical averaged updates"
    reference = _reference_params(steps)
    initial = [p.detach() for p in _make_model(0).parameters()]
    for got, want, start in zip(out[0]["params"], reference, initial, strict=True):
        assert not torch.allclose(want, start), "the reference did not move; test is vacuous"
        torch.testing.assert_close(got, want, rtol=0.0, atol=EQUIVALENCE_ATOL)
    _teardown(ray, members)


def test_loader_shards_are_disjoint_and_cover_the_dataset(ray_local, make_ranks):
    ray = ray_local
    members = make_ranks(2)
    _form(ray, members, generation=0)
    for shuffle in (False, True):
        shards = _get([m.shard.remote(shuffle, 5) for m in members])
        assert not set(shards[0]) & set(shards[1])
        assert sorted(shards[0] + shards[1]) == list(range(10))
    unshuffled = _get(members[0].shard.remote(False, 5))
    shuffled = _get(members[0].shard.remote(True, 5))
    assert shuffled != unshuffled, "shuffle=True gave the unshuffled order"
    assert _get(members[0].shard.remote(True, 5)) == shuffled, "same seed, other order"
    _teardown(ray, members)


def test_optimizer_made_in_a_world_of_one_averages_after_growing(ray_local, make_ranks):
    """A group that starts with one rank and grows: the DistributedOptimizer built at size 1
    must still average gradients at size 2 (Horovod only hooks gradients when size > 1
    unless told otherwise), and a newcomer's fresh wrapper must agree with it."""
    import torch

    ray = ray_local
    a, b = make_ranks(2)
    _form(ray, [a], generation=0)
    _get(a.build.remote(0))
    _teardown(ray, [a])

    _form(ray, [a, b], generation=1)
    same, _ = _get([a.reprepare.remote(), b.build.remote(5)])
    assert same, "prepare_optimizer wrapped the optimizer a second time"
    # One step, each rank on its half of the global batch 0..7.
    got = _get([a.step_on.remote(slice(0, 8, 2)), b.step_on.remote(slice(1, 8, 2))])
    for p0, p1 in zip(got[0], got[1], strict=True):
        assert torch.equal(p0, p1)
    for have, want in zip(got[0], _reference_params(1), strict=True):
        torch.testing.assert_close(have, want, rtol=0.0, atol=EQUIVALENCE_ATOL)
    means = _get(
        [
            a.mean_metrics.remote({"loss": 1.0, "acc": 0.5}),
            b.mean_metrics.remote({"loss": 3.0, "acc": 0.0}),
        ]
    )
    assert means == [{"acc": 0.25, "loss": 2.0}] * 2


def test_lost_rank_fails_collectives_fast_and_survivors_reform(ray_local, make_ranks):
    ray = ray_local
    a, b, c = make_ranks(3)
    _form(ray, [a, b, c], generation=0)
    assert _get([m.allreduce_sum.remote(1.0) for m in (a, b, c)]) == [3.0, 3.0, 3.0]
    ray.kill(c)
    started = time.monotonic()
    failures = _get([m.allreduce_expecting_failure.remote() for m in (a, b)])
    assert all(recognised for recognised, _ in failures), failures
    waited = time.monotonic() - started
    assert waited < LOST_PEER_TIMEOUT_S + 10, f"survivors took {waited:.1f}s to notice"
    _teardown(ray, [a, b])
    _form(ray, [b, a], generation=1)
    assert _get([m.allreduce_sum.remote(2.0) for m in (b, a)]) == [4.0, 4.0]
