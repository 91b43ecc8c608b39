"""DDP throughput inside resolute vs. plain ``torchrun``: same model, batch, ranks, steps.

Four runs, each training the same MLP on synthetic data with torch DDP (gloo on CPU,
NCCL when ``--gpu``):

- ``torchrun``: ``python -m torch.distributed.run --nproc_per_node=N`` (the baseline);
- ``resolute-bare``: the same loop as a resolute trial (a WorkerGroup of N warm worker
  actors), calling only ``ctx.prepare_model`` — the platform's cost outside the loop;
- ``resolute-full``: the most a loop asks of the platform: ``ctx.report`` and
  ``ctx.should_stop()`` every step and an elastic ``state.commit()`` every step (a copy of
  the model and the optimizer state: into reused host buffers on CPU, on the GPU itself
  when training there; the ranks agree on stop and re-formation in a small collective at
  checks that rank 0 spaces ~0.5% of the step time apart, at most 0.1 s);
- ``resolute-commit10``: the same with ``state.commit()`` every 10 steps (``--commit-every``),
  as Horovod's elastic guide advises where a copy of the state costs a noticeable part of a
  step (small, fast steps on CPU).

Throughput is measured on rank 0 over the steps after a warm-up, in samples/s (all ranks),
with rank 0's CPU time per step (its process, all threads: on a shared machine the steadier
measure of the work a mode adds) and torch's intra-/inter-op thread counts, which must match
across modes for a like-for-like comparison. Prints a table and the load average, and
writes ``benchmarks/results/ddp_overhead.json``.

    python benchmarks/ddp_overhead.py --ranks 2 --steps 300
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


# -- the training loop, shared by every mode -------------------------------------------


def build(hidden: int) -> tuple[Any, Any]:
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(784, hidden),
        torch.nn.ReLU(),
        torch.nn.Linear(hidden, hidden),
        torch.nn.ReLU(),
        torch.nn.Linear(hidden, 10),
    )
    return model, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)


def batch(step: int, rank: int, size: int, device: Any) -> tuple[Any, Any]:
    import torch

    gen = torch.Generator().manual_seed(step * 1000 + rank)
    x = torch.randn(size, 784, generator=gen)
    y = torch.randint(0, 10, (size,), generator=gen)
    return x.to(device), y.to(device)


def one_step(ddp: Any, opt: Any, x: Any, y: Any) -> float:
    import torch

    loss = torch.nn.functional.cross_entropy(ddp(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return float(loss.detach())


def timed(steps: int, warmup: int, run_step: Any) -> dict[str, float]:
    """Wall-clock and CPU seconds (this process, all its threads) for ``steps - warmup``
    steps after ``warmup`` untimed ones, and the torch thread settings they ran with. On a
    shared machine the CPU time is the steadier measure of the work each mode adds."""
    import torch

    for s in range(warmup):
        run_step(s)
    start, cpu_start = time.perf_counter(), time.process_time()
    for s in range(warmup, steps):
        run_step(s)
    return {
        "elapsed_s": time.perf_counter() - start,
        "cpu_s": time.process_time() - cpu_start,
        "threads": float(torch.get_num_threads()),
        "interop_threads": float(torch.get_num_interop_threads()),
    }


# -- torchrun worker -------------------------------------------------------------------


def torchrun_worker(args: argparse.Namespace) -> None:
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    use_gpu = args.gpu and torch.cuda.is_available()
    dist.init_process_group("nccl" if use_gpu else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", int(os.environ["LOCAL_RANK"])) if use_gpu else torch.device("cpu")
    model, opt = build(args.hidden)
    model = model.to(device)
    ddp = DistributedDataParallel(model, device_ids=[device.index] if use_gpu else None)

    def run_step(step: int) -> None:
        x, y = batch(step, rank, args.batch, device)
        one_step(ddp, opt, x, y)

    measured = timed(args.steps, args.warmup, run_step)
    if rank == 0:
        Path(args.out).write_text(json.dumps({**measured, "world_size": world}))
    dist.destroy_process_group()


# -- resolute trial functions (entrypoints "ddp_overhead:train_bare" / ":train_full") --


def train_bare(ctx: Any) -> None:
    h = ctx.hparams
    model, opt = build(h["hidden"])
    ddp = ctx.prepare_model(model)

    def run_step(step: int) -> None:
        x, y = batch(step, ctx.rank, h["batch"], ctx.device)
        one_step(ddp, opt, x, y)

    ctx.report(h["steps"], timed(h["steps"], h["warmup"], run_step))


def train_full(ctx: Any) -> None:
    h = ctx.hparams
    model, opt = build(h["hidden"])
    state = ctx.elastic_state(model=model, optimizer=opt, step=0)
    result: dict[str, dict[str, float]] = {}

    def loop(state: Any) -> None:
        ddp = ctx.prepare_model(state.model)

        def run_step(step: int) -> None:
            x, y = batch(step, ctx.rank, h["batch"], ctx.device)
            loss = one_step(ddp, opt, x, y)
            state.step += 1
            if state.step % h.get("commit_every", 1) == 0:
                state.commit()
            ctx.report(state.step, {"loss": loss})
            ctx.should_stop()

        result["timed"] = timed(h["steps"], h["warmup"], run_step)

    state.run(loop)
    ctx.report(h["steps"] + 1, result["timed"])


# -- the driver ------------------------------------------------------------------------


def run_torchrun(args: argparse.Namespace) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "torchrun.json"
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nproc_per_node={args.ranks}",
            "--standalone",
            str(Path(__file__).resolve()),
            "--torchrun-worker",
            "--out",
            str(out),
            *_loop_args(args),
        ]
        subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        measured: dict[str, float] = json.loads(out.read_text())
        return measured


def _loop_args(args: argparse.Namespace) -> list[str]:
    flags = ["--steps", str(args.steps), "--warmup", str(args.warmup)]
    flags += ["--batch", str(args.batch), "--hidden", str(args.hidden)]
    return flags + (["--gpu"] if args.gpu else [])


async def run_resolute(
    args: argparse.Namespace, entrypoint: str, pool: Any, sink: Any, *, commit_every: int = 1
) -> dict[str, float]:
    from resolute.elastic.group import WorkerGroup
    from resolute.elastic.spec import TrialSpec

    trial_id = next(_trial_ids)
    with tempfile.TemporaryDirectory() as tmp:
        spec = TrialSpec(
            experiment_id=1,
            experiment_name="ddp-overhead",
            trial_id=trial_id,
            searcher_trial_id=trial_id,
            hparams={
                "steps": args.steps,
                "warmup": args.warmup,
                "batch": args.batch,
                "hidden": args.hidden,
                "commit_every": commit_every,
            },
            seed=0,
            entrypoint=entrypoint,
            context_dir=str(HERE),
            storage_root=tmp,
            metric="unused",
            time_metric=None,
            until=float("inf"),
            gpus_per_slot=1.0 if args.gpu else 0.0,
            env_vars={"OMP_NUM_THREADS": "1"},
        )
        group = WorkerGroup(spec=spec, sink=sink, pool=pool, max_workers=args.ranks)
        await group.start(args.ranks)
        outcome = await group.wait()
        await group.shutdown()
        if outcome.status != "completed":
            raise RuntimeError(f"{entrypoint} run failed: {outcome.error}\n{outcome.traceback}")
    reports = await sink.get.remote(trial_id)
    return dict(next(r.metrics for r in reports if "elapsed_s" in r.metrics))


_trial_ids = itertools.count(1)


class _Sink:
    def __init__(self) -> None:
        self.reports: list[tuple[int, Any]] = []

    def on_reports(self, trial_id: int, reports: list[Any]) -> None:
        self.reports.extend((trial_id, r) for r in reports)

    def get(self, trial_id: int) -> list[Any]:
        return [r for t, r in self.reports if t == trial_id]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--batch", type=int, default=64, help="per rank")
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--gpu", action="store_true")
    parser.add_argument(
        "--commit-every", type=int, default=10, help="steps between commits, resolute-commit10"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--torchrun-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.torchrun_worker:
        torchrun_worker(args)
        return

    import ray

    from resolute.elastic.pool import WorkerPool

    load_before = os.getloadavg()
    ray.init(include_dashboard=False, num_cpus=args.ranks, num_gpus=args.ranks if args.gpu else 0)
    sink = ray.remote(num_cpus=0)(_Sink).remote()
    pool = WorkerPool()
    runs: dict[str, list[dict[str, float]]] = {
        "torchrun": [],
        "resolute-bare": [],
        "resolute-full": [],
        "resolute-commit10": [],
    }

    async def resolute_runs() -> None:
        runs["resolute-bare"].append(
            await run_resolute(args, "ddp_overhead:train_bare", pool, sink)
        )
        runs["resolute-full"].append(
            await run_resolute(args, "ddp_overhead:train_full", pool, sink)
        )
        runs["resolute-commit10"].append(
            await run_resolute(
                args, "ddp_overhead:train_full", pool, sink, commit_every=args.commit_every
            )
        )

    # Interleave the modes so that a noisy neighbour hurts them alike.
    for _ in range(args.repeats):
        runs["torchrun"].append(run_torchrun(args))
        asyncio.run(resolute_runs())
    asyncio.run(pool.close())
    ray.shutdown()
    load_after = os.getloadavg()

    timed_steps = args.steps - args.warmup
    samples = timed_steps * args.batch * args.ranks
    base = min(r["elapsed_s"] for r in runs["torchrun"])
    base_cpu = min(r["cpu_s"] for r in runs["torchrun"])
    rows = []
    for mode, measured in runs.items():
        best = min(r["elapsed_s"] for r in measured)
        best_cpu = min(r["cpu_s"] for r in measured)
        rows.append(
            {
                "mode": mode,
                "best_s": best,
                "runs_s": [r["elapsed_s"] for r in measured],
                "samples_per_s": samples / best,
                "overhead_vs_torchrun_pct": 100.0 * (best / base - 1.0),
                "cpu_ms_per_step": 1000.0 * best_cpu / timed_steps,
                "cpu_overhead_vs_torchrun_pct": 100.0 * (best_cpu / base_cpu - 1.0),
                "torch_threads": measured[0]["threads"],
                "interop_threads": measured[0]["interop_threads"],
            }
        )
    print(f"\nDDP {args.ranks} ranks, batch {args.batch}/rank, {timed_steps} timed steps")
    print(
        f"{'mode':<19}{'best s':>9}{'samples/s':>12}{'overhead':>10}"
        f"{'cpu ms/step':>13}{'cpu overhead':>14}{'threads':>9}"
    )
    for row in rows:
        print(
            f"{row['mode']:<19}{row['best_s']:>9.3f}{row['samples_per_s']:>12.0f}"
            f"{row['overhead_vs_torchrun_pct']:>9.1f}%{row['cpu_ms_per_step']:>13.2f}"
            f"{row['cpu_overhead_vs_torchrun_pct']:>13.1f}%"
            f"{row['torch_threads']:>6.0f}/{row['interop_threads']:.0f}"
        )
    print(f"load average (1, 5, 15 min): before {load_before}, after {load_after}")
    RESULTS.mkdir(exist_ok=True)
    result = {
        "benchmark": "ddp_overhead",
        "config": {k: v for k, v in vars(args).items() if k not in ("torchrun_worker", "out")},
        "device": "gpu" if args.gpu else "cpu",
        "cpu_count": os.cpu_count(),
        "load_average_before": load_before,
        "load_average_after": load_after,
        "results": rows,
    }
    (RESULTS / "ddp_overhead.json").write_text(json.dumps(result, indent=2))
    print(f"wrote {RESULTS / 'ddp_overhead.json'}")


if __name__ == "__main__":
    main()
