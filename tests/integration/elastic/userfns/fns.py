"""User training functions the elastic tests run on real workers (this directory is the
trials' ``context_dir``). Plain ``train(ctx)`` functions, as a user would write them."""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch


def count_steps(ctx):
    """Reports steps 1..hparams['steps'] (resuming after a checkpoint); on a stop request it
    saves {'step': step} and returns."""
    start = 0
    ckpt = ctx.load_checkpoint()
    if ckpt is not None:
        start = int(ckpt["step"])
        ctx.log.info("resumed from step %d", start)
    for step in range(start + 1, int(ctx.hparams.get("steps", 10)) + 1):
        time.sleep(float(ctx.hparams.get("step_s", 0.0)))
        ctx.report(step, {"loss": 1.0 / step, "world_size": float(ctx.world_size)})
        if ctx.should_stop():
            ctx.save_checkpoint({"step": step})
            return


def raise_error(ctx):
    ctx.log.info("rank %d about to fail", ctx.rank)
    if ctx.rank == ctx.world_size - 1:
        raise ValueError("boom from user code")
    ctx.distributed.barrier()


def cache_probe(ctx):
    """Reports this worker's pid and whether its dataset came from the worker cache."""
    before = ctx.cache.misses
    data = ctx.cache.get_or_create("dataset", lambda: list(range(1000)))
    created = ctx.cache.misses > before
    ctx.report(1, {"pid": float(os.getpid()), "cache_hit": 0.0 if created else 1.0, "n": len(data)})


def not_elastic(ctx):
    """Trains without an elastic state: it cannot be resized in place."""
    for step in range(1, int(ctx.hparams.get("steps", 1000)) + 1):
        ctx.distributed.barrier()
        ctx.report(step, {"loss": 1.0})
        if ctx.should_stop():
            return


def ddp_one_step(ctx):
    """One SGD step of a seeded linear model on this rank's half of a fixed global batch;
    writes the resulting parameters to out_dir/rank<r>.pt."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    ddp = ctx.prepare_model(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(8, 4, generator=gen)
    y = torch.randn(8, 3, generator=gen)
    per_rank = 8 // ctx.world_size
    xs = x[ctx.rank * per_rank : (ctx.rank + 1) * per_rank]
    ys = y[ctx.rank * per_rank : (ctx.rank + 1) * per_rank]
    loss = torch.nn.functional.mse_loss(ddp(xs), ys)
    opt.zero_grad()
    loss.backward()
    opt.step()
    out = Path(ctx.hparams["out_dir"])
    torch.save(
        {k: v.detach().clone() for k, v in model.state_dict().items()}, out / f"rank{ctx.rank}.pt"
    )
    ctx.report(1, {"loss": float(loss)})


def warmup(cache, hparams):
    """The module's warm-up hook: runs on every new worker before it joins a group."""
    cache.get_or_create("warm-data", lambda: list(range(10)))


GLOBAL_BATCH = 12  # divisible by 1, 2, 3 and 4 ranks: every world size sees equal shards


def _global_batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1000 + step)
    x = torch.randn(GLOBAL_BATCH, 8, generator=gen, dtype=torch.float64)
    y = x.sum(dim=1, keepdim=True) * 0.5 + 0.1 * torch.randn(
        GLOBAL_BATCH, 1, generator=gen, dtype=torch.float64
    )
    return x, y


def elastic_regression(ctx):
    """Elastic data-parallel regression: the global batch of each step is fixed by the step,
    split evenly over however many ranks there are, so the trajectory does not depend on
    the world size. Trains to hparams['steps'] or until stopped, then writes the final
    parameters to out_dir/final.pt (chief)."""
    import time

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    model = model.double()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    state = ctx.elastic_state(model=model, optimizer=opt, step=0)
    total = int(ctx.hparams["steps"])
    delay = float(ctx.hparams.get("step_delay", 0.0))

    def loop(state):
        ddp = ctx.prepare_model(state.model)
        while state.step < total:
            x, y = _global_batch(state.step)
            shard = GLOBAL_BATCH // ctx.world_size
            xs = x[ctx.rank * shard : (ctx.rank + 1) * shard]
            ys = y[ctx.rank * shard : (ctx.rank + 1) * shard]
            loss = torch.nn.functional.mse_loss(ddp(xs), ys)
            opt.zero_grad()
            loss.backward()
            opt.step()
            # Every rank reports the same (reduced) values, so whichever rank is chief, and a
            # replay after the chief is lost, sends what the old chief would have. The
            # reduction is a collective: it comes before commit(), so that nothing between
            # commit() and report() can fail.
            metrics = ctx.all_reduce_mean({"loss": float(loss.detach())})
            state.step += 1
            state.commit()
            ctx.report(state.step, {**metrics, "world_size": float(ctx.world_size)})
            if delay:
                time.sleep(delay)
            if ctx.should_stop():
                break
        if ctx.is_chief:
            out = Path(ctx.hparams["out_dir"])
            torch.save(
                {k: v.detach().clone() for k, v in model.state_dict().items()},
                out / "final.pt",
            )

    state.run(loop)


def gpu_probe(ctx):
    """One DDP step on the slot's GPU; reports what it ran on."""
    import torch.distributed as dist

    model = torch.nn.Linear(4, 2)
    ddp = ctx.prepare_model(model)
    x = torch.randn(8, 4, device=ctx.device)
    loss = ddp(x).pow(2).mean()
    loss.backward()
    on_cuda = next(model.parameters()).device.type == "cuda"
    ctx.report(
        1,
        {
            "cuda": float(on_cuda and ctx.device.type == "cuda"),
            "nccl": float(dist.is_initialized() and dist.get_backend() == "nccl"),
            "loss": float(loss.detach()),
        },
    )


def slow_to_stop(ctx):
    """Like ``count_steps``, but lingers ``hparams['linger_s']`` seconds after a stop request
    before it returns (user code that finishes a long step first)."""
    for step in range(1, int(ctx.hparams.get("steps", 10)) + 1):
        ctx.report(step, {"loss": 1.0 / step})
        if ctx.should_stop():
            time.sleep(float(ctx.hparams.get("linger_s", 0.0)))
            return


def lazy_import_probe(ctx):
    """Elastic steps of 20 ms; with hparams['optimizer'] it builds an optimizer first (which
    makes torch import torch._dynamo). Each rank, on entering the loop, appends whether
    torch._dynamo was already imported to out_dir/<pid>.txt."""
    import sys

    if ctx.hparams.get("optimizer"):
        torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
    state = ctx.elastic_state(step=0)
    out = Path(ctx.hparams["out_dir"])

    def loop(state):
        with open(out / f"{os.getpid()}.txt", "a") as f:
            f.write(f"{ctx.world_size} {int('torch._dynamo' in sys.modules)}\n")
        while not ctx.should_stop():
            time.sleep(0.02)
            state.step += 1
            state.commit()
            ctx.report(state.step, {"loss": 1.0 / state.step, "world_size": float(ctx.world_size)})

    state.run(loop)
