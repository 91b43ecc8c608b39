"""Slot utilisation of an ASHA search of short trials: resolute vs. Ray Tune's ASHA.

Three runs of the same search on the same embedded Ray (``ray.init(num_cpus=N)``), one after
the other in one process:

- ``resolute``: one-slot trials, as Ray Tune runs them;
- ``resolute-elastic``: data-parallel trials of 1 to N slots
  (``slots_per_trial: {min: 1, max: N}``). A trial starts on one slot; slots that idle
  because fewer trials than slots are left (the search's tail) are lent to running trials,
  which grow in place; a trial that starts takes a lent slot back first;
- ``tune``: Ray Tune's ``Tuner``; its trials cannot change size.

All three run:

- the same trials, in the same order: trial *i* (resolute: the i-th trial created, its
  journal id - 1 in a fresh journal; Ray Tune: ``grid_search`` index *i*) trains for
  ``max_t`` steps of ``step_s[i]`` seconds of work each, ``step_s`` drawn once, uniform in
  [--step-min, --step-max] (default 1-3 s: a trial stopped at the first rung runs 1-3 s),
  and reports ``loss = (x[i] - 0.5)^2 + 1/step`` after every step. A step is --batches
  batches (default 10); a rank of a trial of *w* ranks does 1/w of each batch's work (a
  fixed global batch split among the ranks, the usual data-parallel contract), and the
  elastic trial commits its state (``ctx.elastic_state``) after every batch;
- the same ASHA settings: stop-based, one bracket, rungs at grace * rf^k up to max_t
  (resolute ``asha`` with ``mode: aggressive, promotion: stop, max_time: max_t, divisor:
  rf``; Ray Tune ``ASHAScheduler(max_t, grace_period=1, reduction_factor=rf,
  brackets=1)``). The cut-off rules differ: resolute keeps a result ranked within the top
  max(floor(n/rf), 1) of the rung's n results (Determined's rule), Ray Tune one at or above
  the interpolated (1 - 1/rf) quantile of the results recorded before it, which keeps more
  (the third result of a rung continues if it beats 2/3 of the way from the worse of the
  first two to the better; in resolute only if it beats both);
- the same concurrency: one CPU per slot, at most N trials at once (resolute
  ``max_concurrent_trials: N``; Ray Tune ``max_concurrent_trials=N, reuse_actors=True``).

Every rank records each batch's start and end wall time (the elastic trial only batches it
committed: a batch that a re-formation interrupted is redone, and counted once), so all are
measured the same way: utilisation = slot-seconds spent in training batches / slot-seconds
available, over

- ``steady``: the first batch's start to the last batch's end (no start-up),
- ``end-to-end``: from the call that submits the search to its return (with start-up), and
- ``while trials were left to start``: the first batch's start to the last trial's first
  batch, when a trial was always waiting for a slot: the scheduler's own share.

Time blocked inside ``report`` (waiting for a decision), commits and re-formations are not
training, so they do not count. The search's tail (fewer trials left than slots) idles
slots unless running trials can use them; it weighs less in the ratio of a search that
trains more slot-seconds (Ray Tune's rule promotes more trials).

    python benchmarks/utilization.py --trials 200          # ~15 minutes, all three
    python benchmarks/utilization.py --trials 24 --step-max 1.5 --only resolute-elastic tune

Prints them side by side and writes ``benchmarks/results/utilization-<trials>.json``; the
work folder (trial timings, Ray's logs) is kept under /tmp and named in the output.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SYSTEMS = ("resolute", "resolute-elastic", "tune")
RESULTS = HERE / "results"

# The user code both systems run. It records every step's wall times itself (one JSON line
# per step, appended and flushed: Ray Tune ends a stopped trial's process without unwinding
# its function, so nothing may wait for the function's end).
TRIAL_MODULE = textwrap.dedent(
    '''
    import json
    import os
    import time

    HERE = os.path.dirname(os.path.abspath(__file__))
    with open(os.path.join(HERE, "workload.json")) as f:
        WORKLOAD = json.load(f)
    BATCHES = WORKLOAD["batches"]


    def timings(system, key, rank):
        path = os.path.join(HERE, "timings", system, f"{key}-{rank}.jsonl")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return open(path, "a", buffering=1)


    def record(out, idx, step, batch, rank, world, t0, t1):
        line = {"idx": idx, "step": step, "batch": batch, "rank": rank, "world": world}
        out.write(json.dumps({**line, "t0": t0, "t1": t1}) + "\\n")


    def loss(idx, step):
        return (WORKLOAD["x"][idx] - 0.5) ** 2 + 1.0 / step


    def run(system, key, idx, report, should_stop):
        """One slot: every step is BATCHES batches of step_s / BATCHES seconds."""
        batch_s = WORKLOAD["step_s"][idx] / BATCHES
        with timings(system, key, 0) as out:
            for step in range(1, WORKLOAD["max_t"] + 1):
                for batch in range(BATCHES):
                    t0 = time.time()
                    time.sleep(batch_s)  # one training batch
                    record(out, idx, step, batch, 0, 1, t0, time.time())
                report(step, {"loss": loss(idx, step)})
                if should_stop():
                    return


    def train(ctx):
        """resolute: trial ids count from 1 in a fresh journal."""
        run("resolute", ctx.trial_id, ctx.trial_id - 1, ctx.report, ctx.should_stop)


    def train_elastic(ctx):
        """resolute, data parallel: a batch's work is split among the ranks (a fixed global
        batch), so a trial lent idle slots finishes its steps sooner. A batch counts once
        it is committed: one the group re-formed under is redone, and not recorded."""
        idx = ctx.trial_id - 1
        batch_s = WORKLOAD["step_s"][idx] / BATCHES
        state = ctx.elastic_state(step=0, batch=0)

        def loop(state):
            rank, world = ctx.rank, ctx.world_size
            with timings("resolute-elastic", ctx.trial_id, f"{rank}-{time.time():.6f}") as out:
                while state.step < WORKLOAD["max_t"]:
                    t0 = time.time()
                    time.sleep(batch_s / world)  # this rank's share of the batch
                    t1 = time.time()
                    step, batch = state.step + 1, state.batch
                    state.batch = (batch + 1) % BATCHES
                    if state.batch == 0:
                        state.step = step
                    state.commit()
                    record(out, idx, step, batch, rank, world, t0, t1)
                    if state.batch == 0:
                        ctx.report(step, {"loss": loss(idx, step)})
                        if ctx.should_stop():
                            return

        state.run(loop)


    def tune_train(config):
        from ray import tune

        key = tune.get_context().get_trial_id()
        run("tune", key, config["idx"], lambda step, m: tune.report(m), lambda: False)
    '''
)


def write_workload(root: Path, args: argparse.Namespace) -> None:
    import numpy as np

    rng = np.random.default_rng(args.seed)
    workload = {
        "max_t": args.max_t,
        "batches": args.batches,
        "step_s": rng.uniform(args.step_min, args.step_max, args.trials).round(3).tolist(),
        "x": rng.uniform(0.0, 1.0, args.trials).round(4).tolist(),
    }
    (root / "workload.json").write_text(json.dumps(workload))
    (root / "bench_trial.py").write_text(TRIAL_MODULE)


# ---------------------------------------------------------------------------- runs
def run_resolute(
    root: Path, args: argparse.Namespace, *, elastic: bool = False
) -> dict[str, float]:
    import ray
    import yaml

    from resolute.config import load_config
    from resolute.runtime import client

    name = "resolute-elastic" if elastic else "resolute"
    slots: object = {"min": 1, "max": args.slots} if elastic else 1
    config_path = root / f"{name}.yaml"
    config_path.write_text(
        yaml.safe_dump(
            {
                "name": "utilization-bench",
                "entrypoint": "bench_trial:train_elastic" if elastic else "bench_trial:train",
                "context_dir": str(root),
                "storage": str(root / f"{name}-storage"),
                "seed": args.seed,
                "hyperparameters": {"x": {"type": "double", "minval": 0.0, "maxval": 1.0}},
                "searcher": {
                    "name": "asha",
                    "metric": "loss",
                    "max_trials": args.trials,
                    "max_time": args.max_t,
                    "divisor": args.reduction_factor,
                    "max_rungs": 10,
                    "mode": "aggressive",
                    "promotion": "stop",
                    "max_concurrent_trials": args.slots,
                },
                "resources": {"slots_per_trial": slots, "cpus_per_slot": 1},
                "max_restarts": 0,
            }
        )
    )
    config = load_config(config_path)
    conn = client.connect(journal_url=f"sqlite:///{root / f'{name}-journal.db'}")
    try:
        start = time.time()
        exp_id = client.submit(conn, config)
        with open(os.devnull, "w") as quiet:
            summary = client.follow(conn, exp_id, out=quiet, poll_s=0.5)
        end = time.time()
    finally:
        # Its warm workers keep their CPUs reserved: release them before Ray Tune runs.
        ray.get(conn.scheduler.shutdown.remote(), timeout=120)
        ray.kill(conn.scheduler)
    if summary["status"] != "COMPLETED":
        raise RuntimeError(f"the {name} search ended {summary['status']}: {summary}")
    return {"start": start, "end": end, "trials": float(summary["trials"])}


def run_tune(root: Path, args: argparse.Namespace) -> dict[str, float]:
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    where = str(root)

    def trainable(config: dict[str, Any]) -> None:
        if where not in sys.path:
            sys.path.insert(0, where)
        import bench_trial

        bench_trial.tune_train(config)

    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": 1}),
        param_space={"idx": tune.grid_search(list(range(args.trials)))},
        tune_config=tune.TuneConfig(
            metric="loss",
            mode="min",
            scheduler=ASHAScheduler(
                max_t=args.max_t,
                grace_period=1,
                reduction_factor=args.reduction_factor,
                brackets=1,
            ),
            max_concurrent_trials=args.slots,
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name="utilization-bench", storage_path=str(root / "tune-storage"), verbose=0
        ),
    )
    start = time.time()
    results = tuner.fit()
    end = time.time()
    errors = [results[i].error for i in range(len(results)) if results[i].error]
    if errors:
        raise RuntimeError(f"{len(errors)} Ray Tune trial(s) failed: {errors[0]}")
    return {"start": start, "end": end, "trials": float(len(results))}


# ------------------------------------------------------------------------- figures
def measure(root: Path, system: str, run: dict[str, float], slots: int) -> dict[str, Any]:
    batches = []
    for path in (root / "timings" / system).glob("*.jsonl"):
        batches += [json.loads(line) for line in path.read_text().splitlines() if line]
    if not batches:
        raise RuntimeError(f"{system}: no training batches were recorded")
    busy = sum(b["t1"] - b["t0"] for b in batches)
    first, last = min(b["t0"] for b in batches), max(b["t1"] for b in batches)
    # A step's span: its first batch's start to its last batch's end, over all its ranks.
    spans: dict[tuple[int, int], list[float]] = {}
    for b in batches:
        span = spans.setdefault((b["idx"], b["step"]), [b["t0"], b["t1"]])
        span[0], span[1] = min(span[0], b["t0"]), max(span[1], b["t1"])
    by_trial: dict[int, list[list[float]]] = {}
    for (idx, _step), span in sorted(spans.items()):
        by_trial.setdefault(idx, []).append(span)
    promoted = {idx for idx, step in spans if step > 1}
    # Where idle slot time went. Until the last trial's first step there was always a trial
    # to start, so idle slot time there is the scheduler's (handovers between trials, and
    # trials waiting inside report for a decision); after it, the tail (fewer trials than
    # slots) idles slots unless running trials can use them.
    last_start = max(ts[0][0] for ts in by_trial.values())

    def busy_in(a: float, b: float) -> float:
        return sum(max(0.0, min(x["t1"], b) - max(x["t0"], a)) for x in batches)

    decision_waits = sum(
        ts[i + 1][0] - ts[i][1]
        for ts in by_trial.values()
        for i in range(len(ts) - 1)
        if ts[i + 1][0] <= last_start
    )
    scheduling_idle = slots * (last_start - first) - busy_in(first, last_start)
    handovers = max(1, len(by_trial) - slots)
    return {
        "utilization_steady": busy / (slots * (last - first)),
        # The scheduler's own figure: while a trial was always waiting to start, the share of
        # slot time in training (the tail depends on the search's promotions).
        "utilization_while_queued": busy_in(first, last_start) / (slots * (last_start - first)),
        "utilization_end_to_end": busy / (slots * (run["end"] - run["start"])),
        "busy_slot_s": busy,
        "busy_lent_slot_s": sum(b["t1"] - b["t0"] for b in batches if b["world"] > 1),
        "steady_s": last - first,
        "end_to_end_s": run["end"] - run["start"],
        "startup_s": first - run["start"],
        "trials": len(by_trial),
        "steps": len(spans),
        "trials_past_first_rung": len(promoted),
        "scheduling_idle_slot_s": scheduling_idle,
        "decision_wait_slot_s": decision_waits,
        "handover_idle_ms": 1000 * (scheduling_idle - decision_waits) / handovers,
        "tail_s": last - last_start,
        "tail_idle_slot_s": slots * (last - last_start) - busy_in(last_start, last),
    }


def report(figures: dict[str, dict[str, Any]], args: argparse.Namespace) -> str:
    rows = [
        ("utilisation, steady (first to last step)", "utilization_steady", "{:.1%}"),
        ("utilisation, end to end", "utilization_end_to_end", "{:.1%}"),
        ("utilisation while trials were left to start", "utilization_while_queued", "{:.2%}"),
        ("slot-seconds in training steps", "busy_slot_s", "{:.1f}"),
        ("  of which in trials of more than one rank", "busy_lent_slot_s", "{:.1f}"),
        ("first to last step (s)", "steady_s", "{:.1f}"),
        ("submit to return (s)", "end_to_end_s", "{:.1f}"),
        ("submit to first step (s)", "startup_s", "{:.1f}"),
        ("trials run", "trials", "{}"),
        ("trials past the first rung", "trials_past_first_rung", "{}"),
        ("training steps", "steps", "{}"),
        ("idle slot-s while trials were left to start", "scheduling_idle_slot_s", "{:.1f}"),
        ("  of which trials waiting for a decision", "decision_wait_slot_s", "{:.1f}"),
        ("  idle per handover between trials (ms)", "handover_idle_ms", "{:.0f}"),
        ("the tail: last trial's first step to the end (s)", "tail_s", "{:.1f}"),
        ("idle slot-s in the tail", "tail_idle_slot_s", "{:.1f}"),
    ]
    systems = list(figures)
    width = max(len(r[0]) for r in rows)
    lines = [
        f"ASHA, {args.trials} trials, steps of {args.step_min:g}-{args.step_max:g} s, "
        f"max_t {args.max_t}, reduction factor {args.reduction_factor:g}, {args.slots} slots",
        " " * width + "".join(f"  {s:>16}" for s in systems),
    ]
    for label, key, fmt in rows:
        cells = "".join(f"  {fmt.format(figures[s][key]):>16}" for s in systems)
        lines.append(label.ljust(width) + cells)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--max-t", type=int, default=9, help="steps a trial runs at most")
    parser.add_argument("--reduction-factor", type=float, default=3.0)
    parser.add_argument("--step-min", type=float, default=1.0, help="seconds per step, least")
    parser.add_argument("--step-max", type=float, default=3.0, help="seconds per step, most")
    parser.add_argument(
        "--batches", type=int, default=10, help="batches per step (an elastic trial commits each)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--only",
        nargs="+",
        choices=SYSTEMS,
        default=list(SYSTEMS),
        help="the systems to run (default: all three)",
    )
    args = parser.parse_args()

    import ray

    root = Path(tempfile.mkdtemp(prefix="rbu-", dir="/tmp"))
    write_workload(root, args)
    os.environ.setdefault("RAY_TMPDIR", str(root / "ray"))
    ray.init(
        num_cpus=args.slots,
        include_dashboard=False,
        namespace="resolute",
        log_to_driver=False,
        logging_level=logging.ERROR,
    )
    runs: dict[str, dict[str, float]] = {}
    try:
        for system in SYSTEMS:
            if system not in args.only:
                continue
            if system == "tune":
                runs[system] = run_tune(root, args)
            else:
                runs[system] = run_resolute(root, args, elastic=system == "resolute-elastic")
    finally:
        ray.shutdown()
    figures = {name: measure(root, name, run, args.slots) for name, run in runs.items()}
    text = report(figures, args)
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"utilization-{args.trials}.json"
    out.write_text(
        json.dumps(
            {
                "settings": vars(args),
                "figures": figures,
                "load_average": os.getloadavg(),
                "cpus": os.cpu_count(),
                "work_dir": str(root),
                "finished_at": time.time(),
            },
            indent=2,
        )
    )
    print(f"written to {out} (trial timings under {root / 'timings'})")


if __name__ == "__main__":
    main()
