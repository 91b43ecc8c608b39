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


def grow_until(ctx):
    """Elastic training that ends on its own once it has trained ``settle`` steps at
    ``target`` ranks (or after ``max_steps``): for tests of clusters that grow."""
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    state = ctx.elastic_state(model=model, optimizer=opt, step=0, at_target=0)
    delay = float(ctx.hparams.get("delay", 0.05))
    target, settle = int(ctx.hparams["target"]), int(ctx.hparams.get("settle", 10))
    max_steps = int(ctx.hparams.get("max_steps", 3000))

    def loop(state):
        net = ctx.prepare_model(state.model)
        while state.step < max_steps and state.at_target < settle and not ctx.should_stop():
            x = torch.randn(8, 4, generator=torch.Generator().manual_seed(state.step))
            loss = torch.nn.functional.mse_loss(net(x), x.sum(dim=1, keepdim=True))
            opt.zero_grad()
            loss.backward()
            opt.step()
            state.step += 1
            state.at_target = state.at_target + 1 if ctx.world_size >= target else 0
            state.commit()
            ctx.report(state.step, {"loss": float(loss), "world_size": float(ctx.world_size)})
            time.sleep(delay)

    state.run(loop)
