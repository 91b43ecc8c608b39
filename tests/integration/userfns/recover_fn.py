"""A trial for the scheduler-restart tests: it counts steps to the searcher's target, saves
its step every ``every`` steps and when told to stop, and resumes from its checkpoint."""

from __future__ import annotations

import time


def steps(ctx):
    ckpt = ctx.load_checkpoint()
    start = int(ckpt["step"]) if ckpt else 0
    step = start
    delay = float(ctx.hparams.get("delay", 0.1))
    every = int(ctx.hparams.get("every", 5))
    while not ctx.should_stop():
        time.sleep(delay)
        step += 1
        if step % every == 0:  # saved before this step's report: name its step
            ctx.save_checkpoint({"step": step}, step=step)
        ctx.report(step, {"loss": 1.0 / step, "resumed_from": float(start)})
    ctx.save_checkpoint({"step": step}, step=step)
