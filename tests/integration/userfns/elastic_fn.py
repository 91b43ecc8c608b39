"""Training functions for the multi-experiment tests: a tiny regression whose steps take a
known time, elastic (resizable in place) and checkpointing when told to stop."""

from __future__ import annotations

import time

import torch


def train(ctx):
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    state = ctx.elastic_state(model=model, optimizer=opt, step=0)
    delay = float(ctx.hparams.get("delay", 0.05))

    def loop(state):
        net = ctx.prepare_model(state.model)
        while not ctx.should_stop():
            gen = torch.Generator().manual_seed(state.step)
            x = torch.randn(8, 4, generator=gen)
            y = x.sum(dim=1, keepdim=True)
            loss = torch.nn.functional.mse_loss(net(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            state.step += 1
            state.commit()
            ctx.report(state.step, {"loss": float(loss), "world_size": float(ctx.world_size)})
            time.sleep(delay)
        ctx.save_checkpoint(state.state_dict())

    state.run(loop)


def fixed(ctx):
    """Not elastic: sleeps ``delay`` per step, checkpoints its step when told to stop."""
    ckpt = ctx.load_checkpoint()
    step = int(ckpt["step"]) if ckpt else 0
    delay = float(ctx.hparams.get("delay", 0.05))
    while not ctx.should_stop():
        time.sleep(delay)
        step += 1
        ctx.report(step, {"loss": 1.0 / step})
    ctx.save_checkpoint({"step": step})
