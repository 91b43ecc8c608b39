"""Slot utilisation of an ASHA search of short trials: resolute vs. Ray Tune's ASHA.

Both systems run the same search on the same embedded Ray (``ray.init(num_cpus=N)``), one
after the other in one process:

- the same trials, in the same order: trial *i* (resolute: the i-th trial created, its
  journal id - 1 in a fresh journal; Ray Tune: ``grid_search`` index *i*) trains for
  ``max_t`` steps of ``step_s[i]`` seconds each, ``step_s`` drawn once, uniform in
  [--step-min, --step-max] (default 1-3 s: a trial stopped at the first rung runs 1-3 s),
  and reports ``loss = (x[i] - 0.5)^2 + 1/step`` after every step;
- the same ASHA: stop-based, one bracket, rungs at grace * rf^k up to max_t (resolute
  ``asha`` with ``mode: aggressive, promotion: stop, max_time: max_t, divisor: rf``;
  Ray Tune ``ASHAScheduler(max_t, grace_period=1, reduction_factor=rf, brackets=1)``);
- the same concurrency: one CPU per trial, at most N at once (resolute
  ``max_concurrent_trials: N``; Ray Tune ``max_concurrent_trials=N, reuse_actors=True``).

Each training step records its own start and end wall time, so both are measured the same
way: utilisation = slot-seconds spent in training steps / slot-seconds available, over

- ``steady``: the first step's start to the last step's end (no start-up),
- ``end-to-end``: from the call that submits the search to its return (with start-up), and
- ``while trials were left to start``: the first step's start to the last trial's first
  step, when a trial was always waiting for a slot: the scheduler's own share.

Time blocked inside ``report`` (waiting for a decision) is not training, so it does not
count. The search's tail (fewer trials left than slots) idles slots for both systems alike,
but weighs less in the ratio of the search that trains more slot-seconds (the two ASHAs do
not promote the same trials).

    python benchmarks/utilization.py --trials 200          # several minutes
    python benchmarks/utilization.py --trials 24 --step-max 1.5   # a quick check

Prints both side by side and writes ``benchmarks/results/utilization-<trials>.json``; the
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


    def run(system, key, idx, report, should_stop):
        step_s = WORKLOAD["step_s"][idx]
        x = WORKLOAD["x"][idx]
        path = os.path.join(HERE, "timings", system, str(key) + ".jsonl")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "a", buffering=1) as out:
            for step in range(1, WORKLOAD["max_t"] + 1):
                t0 = time.time()
                time.sleep(step_s)  # one training step
                t1 = time.time()
                out.write(json.dumps({"idx": idx, "step": step, "t0": t0, "t1": t1}) + "\\n")
                report(step, {"loss": (x - 0.5) ** 2 + 1.0 / step})
                if should_stop():
                    return


    def train(ctx):
        """resolute: trial ids count from 1 in a fresh journal."""
        run("resolute", ctx.trial_id, ctx.trial_id - 1, ctx.report, ctx.should_stop)


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
        "step_s": rng.uniform(args.step_min, args.step_max, args.trials).round(3).tolist(),
        "x": rng.uniform(0.0, 1.0, args.trials).round(4).tolist(),
    }
    (root / "workload.json").write_text(json.dumps(workload))
    (root / "bench_trial.py").write_text(TRIAL_MODULE)


# ---------------------------------------------------------------------------- runs
def run_resolute(root: Path, args: argparse.Namespace) -> dict[str, float]:
    import ray
    import yaml

    from resolute.config import load_config
    from resolute.runtime import client

    config_path = root / "resolute.yaml"
    config_path.write_text(
        yaml.safe_dump(
            {
                "name": "utilization-bench",
                "entrypoint": "bench_trial:train",
                "context_dir": str(root),
                "storage": str(root / "resolute-storage"),
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
                "resources": {"slots_per_trial": 1, "cpus_per_slot": 1},
                "max_restarts": 0,
            }
        )
    )
    config = load_config(config_path)
    conn = client.connect(journal_url=f"sqlite:///{root / 'journal.db'}")
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
        raise RuntimeError(f"the resolute search ended {summary['status']}: {summary}")
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
    steps = []
    for path in (root / "timings" / system).glob("*.jsonl"):
        steps += [json.loads(line) for line in path.read_text().splitlines() if line]
    if not steps:
        raise RuntimeError(f"{system}: no training steps were recorded")
    busy = sum(s["t1"] - s["t0"] for s in steps)
    first, last = min(s["t0"] for s in steps), max(s["t1"] for s in steps)
    trials = {s["idx"] for s in steps}
    promoted = {idx for idx in trials if any(s["idx"] == idx and s["step"] > 1 for s in steps)}
    by_trial: dict[int, list[dict[str, Any]]] = {}
    for s in steps:
        by_trial.setdefault(s["idx"], []).append(s)
    for ts in by_trial.values():
        ts.sort(key=lambda s: s["step"])
    # Where idle slot time went. Until the last trial's first step there was always a trial
    # to start, so idle slot time there is the scheduler's (handovers between trials, and
    # trials waiting inside report for a decision); after it, the tail (fewer trials than
    # slots) idles slots for both systems alike.
    last_start = max(ts[0]["t0"] for ts in by_trial.values())

    def busy_in(a: float, b: float) -> float:
        return sum(max(0.0, min(s["t1"], b) - max(s["t0"], a)) for s in steps)

    decision_waits = sum(
        ts[i + 1]["t0"] - ts[i]["t1"]
        for ts in by_trial.values()
        for i in range(len(ts) - 1)
        if ts[i + 1]["t0"] <= last_start
    )
    scheduling_idle = slots * (last_start - first) - busy_in(first, last_start)
    handovers = max(1, len(by_trial) - slots)
    return {
        "utilization_steady": busy / (slots * (last - first)),
        # The scheduler's own figure: while a trial was always waiting to start, the share of
        # slot time in training (the tail depends on the search's promotions, not on it).
        "utilization_while_queued": busy_in(first, last_start) / (slots * (last_start - first)),
        "utilization_end_to_end": busy / (slots * (run["end"] - run["start"])),
        "busy_slot_s": busy,
        "steady_s": last - first,
        "end_to_end_s": run["end"] - run["start"],
        "startup_s": first - run["start"],
        "trials": len(trials),
        "steps": len(steps),
        "trials_past_first_rung": len(promoted),
        "scheduling_idle_slot_s": scheduling_idle,
        "decision_wait_slot_s": decision_waits,
        "handover_idle_ms": 1000 * (scheduling_idle - decision_waits) / handovers,
        "tail_idle_slot_s": slots * (last - last_start) - busy_in(last_start, last),
    }


def report(figures: dict[str, dict[str, Any]], args: argparse.Namespace) -> str:
    rows = [
        ("utilisation, steady (first to last step)", "utilization_steady", "{:.1%}"),
        ("utilisation, end to end", "utilization_end_to_end", "{:.1%}"),
        ("utilisation while trials were left to start", "utilization_while_queued", "{:.2%}"),
        ("slot-seconds in training steps", "busy_slot_s", "{:.1f}"),
        ("first to last step (s)", "steady_s", "{:.1f}"),
        ("submit to return (s)", "end_to_end_s", "{:.1f}"),
        ("submit to first step (s)", "startup_s", "{:.1f}"),
        ("trials run", "trials", "{}"),
        ("trials past the first rung", "trials_past_first_rung", "{}"),
        ("training steps", "steps", "{}"),
        ("idle slot-s while trials were left to start", "scheduling_idle_slot_s", "{:.1f}"),
        ("  of which trials waiting for a decision", "decision_wait_slot_s", "{:.1f}"),
        ("  idle per handover between trials (ms)", "handover_idle_ms", "{:.0f}"),
        ("idle slot-s in the tail", "tail_idle_slot_s", "{:.1f}"),
    ]
    systems = list(figures)
    width = max(len(r[0]) for r in rows)
    lines = [
        f"ASHA, {args.trials} trials, steps of {args.step_min:g}-{args.step_max:g} s, "
        f"max_t {args.max_t}, reduction factor {args.reduction_factor:g}, {args.slots} slots",
        " " * width + "".join(f"  {s:>12}" for s in systems),
    ]
    for label, key, fmt in rows:
        cells = "".join(f"  {fmt.format(figures[s][key]):>12}" for s in systems)
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
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--only", choices=["resolute", "tune"], default=None, help="run one system only"
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
        if args.only in (None, "resolute"):
            runs["resolute"] = run_resolute(root, args)
        if args.only in (None, "tune"):
            runs["tune"] = run_tune(root, args)
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
