"""Resize pause: seconds from a cluster change to the first training step at the new size,
resolute's elastic WorkerGroup vs. Ray Train V2's elastic ``TorchTrainer``
(``ScalingConfig(num_workers=(min, max))``), same model, same cluster changes, one run.

A ``ray.cluster_utils.Cluster`` with 1-CPU nodes: training starts at 2 ranks on nodes A and
B; node C joins (grow to 3); node C is removed (shrink to 2). Each step, rank 0 sends
``(step, world_size, wall time)`` to a recording actor on the head node.

- resolute: on node join the driver calls ``group.resize(3)`` at once, standing in for the
  scheduler (so the figure is from the resize call); node removal is noticed by the group
  itself. Rolls back to the in-memory commit of the previous step. Also measured: a
  scheduler-initiated shrink (``resize(2)``, giving a slot back), which Ray Train has no
  call for.
- Ray Train V2: grows when its elastic policy sees the new node (checked every
  ``elastic_resize_monitor_interval_s`` = 1 s here, its most eager useful setting) and
  restarts the whole worker group from the latest checkpoint (every ``CKPT_EVERY`` steps);
  on node loss it restarts with the remaining workers (``FailureConfig(max_failures)``).

Prints a table; writes ``benchmarks/results/resize_pause.json``.

    python benchmarks/resize_pause.py
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
        self.stop = False

    def step(self, step: int, world_size: int, wall: float) -> None:
        self.steps.append((step, world_size, wall))

    def on_reports(self, trial_id: int, reports: list[Any]) -> None:
        for r in reports:
            if r.kind == "metrics":
                self.steps.append((r.step, int(r.metrics["world_size"]), r.metrics["wall"]))

    def get(self) -> list[tuple[int, int, float]]:
        return list(self.steps)

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
    state = ctx.elastic_state(model=model, optimizer=opt, step=0)

    def loop(state: Any) -> None:
        ddp = ctx.prepare_model(state.model)
        while True:
            train_step(ddp, opt, state.step, ctx.rank, ctx.hparams["batch"])
            state.step += 1
            state.commit()
            ctx.report(state.step, {"world_size": ctx.world_size, "wall": time.time()})
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


def first_at(steps: list[tuple[int, int, float]], size: int, after: float) -> float | None:
    times = [wall for _, ws, wall in steps if ws == size and wall > after]
    return min(times) - after if times else None


def gap(steps: list[tuple[int, int, float]], size: int, after: float) -> float | None:
    """Seconds without training across the change: the last step at the old size to the
    first step at ``size`` (new ranks warm up while the old ones still train)."""
    first = first_at(steps, size, after)
    if first is None:
        return None
    t_new = after + first
    before = [wall for _, ws, wall in steps if ws != size and wall < t_new]
    return t_new - max(before) if before else None


def redone(steps: list[tuple[int, int, float]]) -> int:
    best, count = 0, 0
    for step, _, _ in steps:
        if step <= best:
            count += 1
        best = max(best, step)
    return count


def wait_steps(sink: Any, pred: Any, timeout: float = 300.0) -> list[tuple[int, int, float]]:
    import ray

    deadline = time.time() + timeout
    while time.time() < deadline:
        steps = ray.get(sink.get.remote())
        if pred(steps):
            return steps
        time.sleep(0.1)
    raise TimeoutError("the training did not reach the expected state in time")


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


def measure_resolute(args: argparse.Namespace) -> dict[str, Any]:
    import ray

    from resolute.elastic.group import WorkerGroup
    from resolute.elastic.pool import WorkerPool
    from resolute.elastic.spec import TrialSpec

    cluster, sink, _ = start_cluster()
    result: dict[str, Any] = {}
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
            env_vars={"OMP_NUM_THREADS": "1"},
        )

        async def run() -> None:
            pool = WorkerPool()
            group = WorkerGroup(spec=spec, sink=sink, pool=pool, min_workers=1, max_workers=3)
            await group.start(2)
            await asyncio.to_thread(wait_steps, sink, lambda s: len(s) >= args.warm_steps)
            node_c = cluster.add_node(num_cpus=1)
            await asyncio.to_thread(cluster.wait_for_nodes)
            t_grow = time.time()
            await group.resize(3)
            steps = await asyncio.to_thread(
                wait_steps, sink, lambda s: first_at(s, 3, t_grow) is not None
            )
            result["grow_on_node_join_s"] = first_at(steps, 3, t_grow)
            result["grow_training_gap_s"] = gap(steps, 3, t_grow)
            await asyncio.to_thread(wait_steps, sink, lambda s: len(s) >= len(steps) + 20)
            t_shrink = time.time()
            cluster.remove_node(node_c, allow_graceful=False)
            steps = await asyncio.to_thread(
                wait_steps, sink, lambda s: first_at(s, 2, t_shrink) is not None
            )
            result["shrink_on_node_loss_s"] = first_at(steps, 2, t_shrink)
            result["shrink_training_gap_s"] = gap(steps, 2, t_shrink)
            # A scheduler-initiated shrink (give a slot back) from 2 to 1, for reference.
            await asyncio.to_thread(wait_steps, sink, lambda s: len(s) >= len(steps) + 20)
            t_give = time.time()
            await group.resize(1)
            steps = await asyncio.to_thread(
                wait_steps, sink, lambda s: first_at(s, 1, t_give) is not None
            )
            result["shrink_by_resize_call_s"] = first_at(steps, 1, t_give)
            result["shrink_by_resize_call_gap_s"] = gap(steps, 1, t_give)
            group.request_stop(pause=False)
            await group.wait()
            await group.shutdown()
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
        result["grow_on_node_join_s"] = first_at(steps, 3, t_grow)
        result["grow_training_gap_s"] = gap(steps, 3, t_grow)
        wait_steps(sink, lambda s: len(s) >= len(steps) + 20)
        t_shrink = time.time()
        cluster.remove_node(node_c, allow_graceful=False)
        steps = wait_steps(sink, lambda s: first_at(s, 2, t_shrink) is not None)
        result["shrink_on_node_loss_s"] = first_at(steps, 2, t_shrink)
        result["shrink_training_gap_s"] = gap(steps, 2, t_shrink)
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
    args = parser.parse_args()
    measured = {"resolute": measure_resolute(args), "ray_train_v2": measure_ray_train(args)}
    print(f"\n{'seconds to first step at new size':<36}{'resolute':>10}{'Ray Train V2':>14}")
    keys = (
        "grow_on_node_join_s",
        "grow_training_gap_s",
        "shrink_on_node_loss_s",
        "shrink_training_gap_s",
        "shrink_by_resize_call_s",
        "shrink_by_resize_call_gap_s",
    )
    for key in keys:
        cells = []
        for system in ("resolute", "ray_train_v2"):
            value = measured[system].get(key)
            cells.append(f"{value:.2f}" if isinstance(value, float) else "n/a")
        print(f"{key:<36}{cells[0]:>10}{cells[1]:>14}")
    print(
        f"{'steps redone':<36}{measured['resolute']['steps_redone']:>10}"
        f"{measured['ray_train_v2']['steps_redone']:>14}"
    )
    RESULTS.mkdir(exist_ok=True)
    out = {
        "benchmark": "resize_pause",
        "config": vars(args) | {"ray_train_ckpt_every": CKPT_EVERY, "node_cpus": 1},
        "cpu_count": os.cpu_count(),
        "results": measured,
    }
    (RESULTS / "resize_pause.json").write_text(json.dumps(out, indent=2))
    print(f"wrote {RESULTS / 'resize_pause.json'}")


if __name__ == "__main__":
    main()
