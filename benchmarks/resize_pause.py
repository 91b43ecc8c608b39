"""Resize pause: seconds from a cluster change to the first training step at the new size,
resolute's elastic WorkerGroup (torch DDP and Horovod backends) vs. Ray Train V2's elastic
``TorchTrainer`` (``ScalingConfig(num_workers=(min, max))``), same model, same cluster
changes, one run.

A ``ray.cluster_utils.Cluster`` with 1-CPU nodes: training starts at 2 ranks on nodes A and
B; node C joins (grow to 3); node C is removed (shrink to 2). Each step, rank 0 sends
``(step, world_size, wall time)`` to a recording actor on the head node. Two figures per
change: from the decision (the resize call, or the node's removal) to the first step at
the new size, and the pause: from the last step at the old size to the first at the new
one (a new rank starts and warms while the others still train, so that is not paused).

- resolute: on node join the driver calls ``group.resize(3)`` at once, standing in for the
  scheduler; node removal is noticed by the group itself. Rolls back to the in-memory
  commit of the previous step. Also measured, between the join and the removal: a
  scheduler-initiated shrink (``resize(2)``, giving a slot back) and a grow back onto that
  warm worker (``resize(3)``), which Ray Train has no call for. The re-formation's phases
  (``WorkerGroup.timeline``) are printed as a breakdown of each pause. Horovod's Gloo
  timeout (how long it takes to notice a lost peer) is set to 10 s.
- Ray Train V2: grows when its elastic policy sees the new node (checked every
  ``elastic_resize_monitor_interval_s`` = 1 s here, its most eager useful setting) and
  restarts the whole worker group from the latest checkpoint (every ``CKPT_EVERY`` steps);
  on node loss it restarts with the remaining workers (``FailureConfig(max_failures)``).

Prints a table and the breakdowns; writes ``benchmarks/results/resize_pause.json``
(``resize_pause.<systems>.json`` with ``--only``).

    python benchmarks/resize_pause.py                          # all three systems
    python benchmarks/resize_pause.py --only resolute_horovod  # one (repeatable)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from resize_pause_report import SYSTEMS, breakdown, first_at, gap, print_table, redone

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
SINK_NAME = "resize-bench-sink"
CKPT_EVERY = 10
HEALTH = {
    "health_check_initial_delay_ms": 0,
    "health_check_period_ms": 500,
    "health_check_timeout_ms": 500,
    "health_check_failure_threshold": 3,
}


class StepSink:
    """Records rank 0's steps; also the resolute sink (``on_reports``) and the stop switch."""

    def __init__(self) -> None:
        self.steps: list[tuple[int, int, float]] = []
        self.wrapped: dict[int, float] = {}  # step -> when its loop's DDP wrap ended
        self.events: list[str] = []  # the group's membership events, for the record
        self.stop = False

    def step(self, step: int, world_size: int, wall: float) -> None:
        self.steps.append((step, world_size, wall))

    def on_reports(self, trial_id: int, reports: list[Any]) -> None:
        for r in reports:
            if r.kind == "metrics":
                self.steps.append((r.step, int(r.metrics["world_size"]), r.metrics["wall"]))
                self.wrapped[r.step] = r.metrics["wrapped"]
            elif r.kind == "event":
                self.events.append(f"{time.time():.3f} {r.message}")

    def get(self) -> list[tuple[int, int, float]]:
        return list(self.steps)

    def get_events(self) -> list[str]:
        return list(self.events)

    def wrapped_at(self, step: int) -> float | None:
        return self.wrapped.get(step)

    def set_stop(self) -> None:
        self.stop = True

    def should_stop(self) -> bool:
        return self.stop


def build(hidden: int) -> tuple[Any, Any]:
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(784, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 10)
    )
    return model, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)


def train_step(ddp: Any, opt: Any, step: int, rank: int, batch: int) -> None:
    import torch

    gen = torch.Generator().manual_seed(step * 1000 + rank)
    x, y = torch.randn(batch, 784, generator=gen), torch.randint(0, 10, (batch,), generator=gen)
    loss = torch.nn.functional.cross_entropy(ddp(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()


# -- resolute's trial function (entrypoint "resize_pause:train_resolute") ----------------


def train_resolute(ctx: Any) -> None:
    model, opt = build(ctx.hparams["hidden"])
    opt = ctx.prepare_optimizer(opt, model)  # Horovod's DistributedOptimizer; torch: as is
    state = ctx.elastic_state(model=model, optimizer=opt, step=0)

    def loop(state: Any) -> None:
        ddp = ctx.prepare_model(state.model)
        wrapped = time.time()  # the end of the DDP wrap (or Horovod's parameter broadcast)
        while True:
            train_step(ddp, opt, state.step, ctx.rank, ctx.hparams["batch"])
            state.step += 1
            state.commit()
            metrics = {"world_size": ctx.world_size, "wall": time.time(), "wrapped": wrapped}
            ctx.report(state.step, metrics)
            if ctx.should_stop():
                return

    state.run(loop)


# -- Ray Train V2's training function ----------------------------------------------------


def train_ray(config: dict[str, Any]) -> None:
    import ray
    import ray.train
    import ray.train.torch
    import torch

    model, opt = build(config["hidden"])
    step = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            saved = torch.load(Path(d) / "state.pt")
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["opt"])
        step = saved["step"]
    ddp = ray.train.torch.prepare_model(model)
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    sink = ray.get_actor(SINK_NAME)
    while True:
        train_step(ddp, opt, step, rank, config["batch"])
        step += 1
        if step % CKPT_EVERY == 0:
            with tempfile.TemporaryDirectory() as d:
                if rank == 0:
                    state = {"model": model.state_dict(), "opt": opt.state_dict(), "step": step}
                    torch.save(state, Path(d) / "state.pt")
                    ray.train.report(
                        {"step": step}, checkpoint=ray.train.Checkpoint.from_directory(d)
                    )
                else:
                    ray.train.report({"step": step})
            if ray.get(sink.should_stop.remote()):
                return
        if rank == 0:
            sink.step.remote(step, world, time.time())


# -- measuring -----------------------------------------------------------------------


def wait_steps(sink: Any, pred: Any, timeout: float = 120.0) -> list[tuple[int, int, float]]:
    import ray

    deadline = time.time() + timeout
    while time.time() < deadline:
        steps = ray.get(sink.get.remote())
        if pred(steps):
            return steps
        time.sleep(0.1)
    events = "\n".join(ray.get(sink.get_events.remote()))
    raise TimeoutError(f"the training did not reach the expected state in time; events:\n{events}")


def start_cluster() -> tuple[Any, Any, Any]:
    import ray
    from ray.cluster_utils import Cluster
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 0, "include_dashboard": False, "_system_config": HEALTH},
    )
    for _ in range(2):
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)
    head = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    sink = (
        ray.remote(num_cpus=0)(StepSink).options(name=SINK_NAME, scheduling_strategy=head).remote()
    )
    return cluster, sink, head


def measure_resolute(args: argparse.Namespace, backend: str) -> dict[str, Any]:
    import ray

    from resolute.elastic.group import WorkerGroup
    from resolute.elastic.pool import WorkerPool
    from resolute.elastic.spec import TrialSpec

    cluster, sink, _ = start_cluster()
    result: dict[str, Any] = {"breakdown": {}}
    with tempfile.TemporaryDirectory() as tmp:
        spec = TrialSpec(
            experiment_id=1,
            experiment_name="resize-bench",
            trial_id=1,
            searcher_trial_id=1,
            hparams={"hidden": args.hidden, "batch": args.batch},
            seed=0,
            entrypoint="resize_pause:train_resolute",
            context_dir=str(HERE),
            storage_root=tmp,
            metric="unused",
            time_metric=None,
            until=float("inf"),
            backend=backend,
            # Horovod notices a lost peer by its Gloo timeout (default 30 s).
            env_vars={"OMP_NUM_THREADS": "1", "RESOLUTE_HOROVOD_TIMEOUT_S": "10"},
        )

        async def change(name: str, act: Any, size: int, group: Any) -> None:
            steps = await sink.get.remote()
            await asyncio.to_thread(wait_steps, sink, lambda s: len(s) >= len(steps) + 20)
            t = time.time()
            await act()
            steps = await asyncio.to_thread(
                wait_steps, sink, lambda s: first_at(s, size, t) is not None
            )
            result[f"{name}_s"] = first_at(steps, size, t)
            result[f"{name}_gap_s"] = gap(steps, size, t)
            parts = breakdown(await group.timeline(), group.generation, steps, size, sink)
            result["breakdown"][name] = parts
            around = [st for st in steps if abs(st[2] - t) < 3.0]
            result.setdefault("steps_around", {})[name] = [t, around]

        async def run() -> None:
            pool = WorkerPool()
            group = WorkerGroup(spec=spec, sink=sink, pool=pool, min_workers=1, max_workers=3)
            await group.start(2)
            await asyncio.to_thread(wait_steps, sink, lambda s: len(s) >= args.warm_steps)
            node_c = cluster.add_node(num_cpus=1)
            await asyncio.to_thread(cluster.wait_for_nodes)
            # The driver calls resize(3) as soon as the node is up, standing in for the
            # scheduler: "grow" runs from the decision to the first step at 3 ranks.
            try:
                await change("grow", lambda: group.resize(3), 3, group)
                # A scheduler-initiated shrink (give a slot back), then grow again onto
                # that warm worker (no process start), then node C is lost (3 -> 2).
                await change("shrink_by_resize_call", lambda: group.resize(2), 2, group)
                await change("regrow_warm", lambda: group.resize(3), 3, group)

                async def lose_node() -> None:
                    cluster.remove_node(node_c, allow_graceful=False)

                await change("shrink_on_node_loss", lose_node, 2, group)
            except Exception as exc:  # noqa: BLE001 - recorded, the other figures still count
                result["error"] = f"{type(exc).__name__}: {exc}"
                print(f"resolute ({backend}) failed: {result['error']}")
            group.request_stop(pause=False)
            await group.shutdown(grace_s=30.0)
            await pool.close()
            result["steps_redone"] = redone(await sink.get.remote())

        asyncio.run(run())
    ray.shutdown()
    cluster.shutdown()
    return result


def measure_ray_train(args: argparse.Namespace) -> dict[str, Any]:
    os.environ["RAY_TRAIN_V2_ENABLED"] = "1"
    import ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    cluster, sink, _ = start_cluster()
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        trainer = TorchTrainer(
            train_ray,
            train_loop_config={"hidden": args.hidden, "batch": args.batch},
            scaling_config=ScalingConfig(num_workers=(1, 3), elastic_resize_monitor_interval_s=1.0),
            run_config=RunConfig(
                storage_path=tmp, name="resize-bench", failure_config=FailureConfig(max_failures=5)
            ),
        )
        errors: list[BaseException] = []

        def fit() -> None:
            try:
                trainer.fit()
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        thread = threading.Thread(target=fit, daemon=True)
        thread.start()
        wait_steps(sink, lambda s: sum(1 for x in s if x[1] == 2) >= args.warm_steps)
        node_c = cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        t_grow = time.time()
        steps = wait_steps(sink, lambda s: first_at(s, 3, t_grow) is not None)
        result["grow_s"] = first_at(steps, 3, t_grow)
        result["grow_gap_s"] = gap(steps, 3, t_grow)
        wait_steps(sink, lambda s: len(s) >= len(steps) + 20)
        t_shrink = time.time()
        cluster.remove_node(node_c, allow_graceful=False)
        steps = wait_steps(sink, lambda s: first_at(s, 2, t_shrink) is not None)
        result["shrink_on_node_loss_s"] = first_at(steps, 2, t_shrink)
        result["shrink_on_node_loss_gap_s"] = gap(steps, 2, t_shrink)
        ray.get(sink.set_stop.remote())
        thread.join(timeout=120)
        result["steps_redone"] = redone(ray.get(sink.get.remote()))
        if errors:
            result["error"] = repr(errors[0])
    ray.shutdown()
    cluster.shutdown()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--warm-steps", type=int, default=30)
    parser.add_argument(
        "--only",
        choices=SYSTEMS,
        action="append",
        help="measure only this system (repeatable); default: all, in one run",
    )
    args = parser.parse_args()
    measured: dict[str, dict[str, Any]] = {}
    for system in args.only or SYSTEMS:
        if system == "ray_train_v2":
            measured[system] = measure_ray_train(args)
        else:
            measured[system] = measure_resolute(args, system.removeprefix("resolute_"))
    print_table(measured)
    RESULTS.mkdir(exist_ok=True)
    out = {
        "benchmark": "resize_pause",
        "config": vars(args) | {"ray_train_ckpt_every": CKPT_EVERY, "node_cpus": 1},
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg(),
        "results": measured,
    }
    name = "resize_pause.json" if not args.only else f"resize_pause.{'-'.join(args.only)}.json"
    (RESULTS / name).write_text(json.dumps(out, indent=2))
    print(f"wrote {RESULTS / name}")


if __name__ == "__main__":
    main()
