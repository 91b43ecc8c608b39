"""Trial start latency: warm worker reuse vs. a fresh worker process per trial.

Two runs of the same search on the same embedded Ray, one slot, one trial at a time
(``searcher: random``, ``max_concurrent_trials: 1``), trials that report once and return:

- ``resources.reuse_workers: true`` (the default): a trial starts on a warm worker actor
  that ran an earlier trial (its Python process, imports and dataset cache are kept);
- ``resources.reuse_workers: false``: every trial gets a new worker process.

Latency = the first line of the trial's function (its own ``time.time()``) minus the
trial's ``created_at`` in the journal: the moment the searcher's ``Create`` was carried
out, which with a free slot is the scheduler's decision to start it. The first trial of a
run is cold in both modes and is shown apart. Also shown: the turnaround a slot sees, from
one trial's last line to the next trial's first line.

    python benchmarks/trial_start.py --trials 20

Prints both side by side and writes ``benchmarks/results/trial_start.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

TRIAL_MODULE = textwrap.dedent(
    """
    import json
    import os
    import time

    HERE = os.path.dirname(os.path.abspath(__file__))


    def train(ctx):
        first_line = time.time()
        ctx.report(1, {"loss": float(ctx.hparams["x"])})
        last_line = time.time()
        path = os.path.join(HERE, "starts", os.environ["BENCH_MODE"], f"{ctx.trial_id}.json")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        record = {"trial_id": ctx.trial_id, "first": first_line, "last": last_line}
        with open(path, "w") as out:
            json.dump(record, out)
    """
)


def run_mode(root: Path, mode: str, reuse: bool, trials: int) -> dict[str, Any]:
    import ray
    import yaml

    from resolute.config import load_config
    from resolute.runtime import client
    from resolute.runtime.journal import Journal

    config_path = root / f"{mode}.yaml"
    config_path.write_text(
        yaml.safe_dump(
            {
                "name": f"trial-start-{mode}",
                "entrypoint": "start_trial:train",
                "context_dir": str(root),
                "storage": str(root / "storage"),
                "seed": 0,
                "hyperparameters": {"x": {"type": "double", "minval": 0.0, "maxval": 1.0}},
                "searcher": {
                    "name": "random",
                    "metric": "loss",
                    "max_trials": trials,
                    "max_time": 1,
                    "max_concurrent_trials": 1,
                },
                "resources": {"slots_per_trial": 1, "reuse_workers": reuse},
                "environment": {"env_vars": {"BENCH_MODE": mode}},
                "tracking": {"tensorboard": False},
                "max_restarts": 0,
            }
        )
    )
    journal_url = f"sqlite:///{root / f'{mode}.db'}"
    conn = client.connect(journal_url=journal_url)
    try:
        exp_id = client.submit(conn, load_config(config_path))
        with open(os.devnull, "w") as quiet:
            summary = client.follow(conn, exp_id, out=quiet, poll_s=0.5)
    finally:
        # A fresh scheduler and an empty worker pool for the next mode.
        ray.get(conn.scheduler.shutdown.remote(), timeout=120)
        ray.kill(conn.scheduler)
    if summary["status"] != "COMPLETED":
        raise RuntimeError(f"{mode}: the search ended {summary['status']}: {summary}")
    created = {t.id: t.created_at for t in Journal(journal_url).list_trials(exp_id)}
    records = [json.loads(p.read_text()) for p in sorted((root / "starts" / mode).glob("*.json"))]
    records.sort(key=lambda r: r["first"])
    latencies = [r["first"] - created[r["trial_id"]] for r in records]
    turnaround = [b["first"] - a["last"] for a, b in zip(records, records[1:], strict=False)]
    if len(latencies) != trials:
        raise RuntimeError(f"{mode}: {len(latencies)} of {trials} trials recorded a start")
    warm = latencies[1:]
    return {
        "reuse_workers": reuse,
        "trials": len(latencies),
        "cold_first_s": latencies[0],
        "median_s": statistics.median(warm),
        "mean_s": statistics.fmean(warm),
        "p90_s": _percentile(warm, 0.9),
        "max_s": max(warm),
        "turnaround_median_s": statistics.median(turnaround),
        "latencies_s": latencies,
    }


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def report(figures: dict[str, dict[str, Any]], trials: int) -> str:
    rows = [
        ("first trial (cold in both)", "cold_first_s"),
        ("later trials, median", "median_s"),
        ("later trials, mean", "mean_s"),
        ("later trials, p90", "p90_s"),
        ("later trials, max", "max_s"),
        ("slot turnaround, median", "turnaround_median_s"),
    ]
    width = max(len(r[0]) for r in rows)
    modes = list(figures)
    lines = [
        f"trial start latency, seconds (journal created_at -> first line of user code), "
        f"{trials} trials one at a time",
        " " * width + "".join(f"  {m:>14}" for m in modes),
    ]
    for label, key in rows:
        lines.append(label.ljust(width) + "".join(f"  {figures[m][key]:>14.3f}" for m in modes))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    args = parser.parse_args()
    if args.trials < 2:
        parser.error("--trials must be at least 2 (the first trial is cold in both modes)")

    import ray

    root = Path(tempfile.mkdtemp(prefix="rbs-", dir="/tmp"))
    (root / "start_trial.py").write_text(TRIAL_MODULE)
    os.environ.setdefault("RAY_TMPDIR", str(root / "ray"))
    ray.init(
        num_cpus=1,
        include_dashboard=False,
        namespace="resolute",
        log_to_driver=False,
        logging_level=logging.ERROR,
    )
    try:
        figures = {
            "warm reuse": run_mode(root, "warm", True, args.trials),
            "fresh worker": run_mode(root, "fresh", False, args.trials),
        }
    finally:
        ray.shutdown()
    print(report(figures, args.trials))
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "trial_start.json"
    out.write_text(
        json.dumps(
            {
                "settings": vars(args),
                "figures": figures,
                "load_average": os.getloadavg(),
                "cpus": os.cpu_count(),
                "finished_at": time.time(),
            },
            indent=2,
        )
    )
    print(f"written to {out}")


if __name__ == "__main__":
    main()
