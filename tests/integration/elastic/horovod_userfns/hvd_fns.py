"""Training functions the Horovod worker-group tests run (this directory is their
``context_dir``). Written against ``ctx`` only, so they run unchanged on backend "torch",
on backend "horovod" and as a plain local script."""

from __future__ import annotations

import time
from pathlib import Path

import torch

GLOBAL_BATCH = 12  # divisible by 1, 2 and 3 ranks: every world size sees equal shards


def _global_batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(2000 + step)
    x = torch.randn(GLOBAL_BATCH, 6, generator=gen, dtype=torch.float64)
    y = x.sum(dim=1, keepdim=True) * 0.3 + 0.1 * torch.randn(
        GLOBAL_BATCH, 1, generator=gen, dtype=torch.float64
    )
    return x, y


def elastic_regression(ctx):
    """Elastic data-parallel regression whose trajectory does not depend on the world size:
    step s trains on a global batch fixed by s, split evenly over the ranks. The optimizer
    is prepared once, before the elastic state (Horovod's DistributedOptimizer holds the
    state that must be committed and restored). Writes the chief's final parameters to
    out_dir/final.pt."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 1))
    model = model.double()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    opt = ctx.prepare_optimizer(opt, model)
    state = ctx.elastic_state(model=model, optimizer=opt, step=0)
    total = int(ctx.hparams["steps"])
    delay = float(ctx.hparams.get("step_delay", 0.0))

    def loop(state):
        net = ctx.prepare_model(state.model)
        while state.step < total:
            x, y = _global_batch(state.step)
            shard = GLOBAL_BATCH // ctx.world_size
            xs = x[ctx.rank * shard : (ctx.rank + 1) * shard]
            ys = y[ctx.rank * shard : (ctx.rank + 1) * shard]
            loss = torch.nn.functional.mse_loss(net(xs), ys)
            opt.zero_grad()
            loss.backward()
            opt.step()
            state.step += 1
            state.commit()
            metrics = ctx.all_reduce_mean({"loss": float(loss.detach())})
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
