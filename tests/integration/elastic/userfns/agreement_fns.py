"""User functions for the check-schedule tests: fast elastic steps on every rank."""

from __future__ import annotations

import torch


def fast_elastic_steps(ctx):
    """Elastic steps of ~1 ms (one all-reduce each, so the ranks go in step), committing,
    reporting and asking should_stop() every step, until stopped or hparams['steps']. The
    chief ends with a 'done' report of how many checks the two schedules made."""
    model = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    state = ctx.elastic_state(model=model, optimizer=opt, step=0)
    total = int(ctx.hparams.get("steps", 1_000_000))

    def loop(state):
        while state.step < total:
            loss = model(torch.ones(2, 4)).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            metrics = ctx.all_reduce_mean({"loss": float(loss.detach())})
            state.step += 1
            state.commit()
            ctx.report(state.step, metrics)
            if ctx.should_stop():
                break

    state.run(loop)
    ctx.report(
        state.step + 1,
        {
            "done": 1.0,
            "stop_checks": float(ctx._reporting._stop_checks.checks),
            "commit_checks": float(state._checks.checks),
            "last_step": float(state.step),
        },
    )
