"""What the control plane hands a worker group: one trial's run, as plain data."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class TrialSpec:
    experiment_id: int
    experiment_name: str
    trial_id: int  # global id (journal)
    searcher_trial_id: int  # the searcher's per-experiment id
    hparams: dict[str, Any]
    seed: int
    entrypoint: str  # "module:function", imported with context_dir on sys.path
    context_dir: str  # "": the code came as runtime_env's working_dir (the worker's cwd)
    storage_root: str
    metric: str  # the searcher metric: a report carrying it at time >= until is a decision point
    time_metric: str | None  # None: a report's time is its step
    until: float  # first target, in time units
    restore_from: str | None = None  # checkpoint uri to start from (resume, restart, PBT clone)
    checkpoint_period: float | None = None  # time units between durable commits
    backend: str = "torch"  # "torch" | "horovod"
    gpus_per_slot: float = 0.0
    cpus_per_slot: float = 1.0
    env_vars: dict[str, str] = field(default_factory=dict)
    reuse_workers: bool = True
    attempt: int = 0  # restart count; a fresh attempt starts from restore_from
    # The Ray runtime_env the workers are created with (working_dir package, pip, env_vars);
    # None: the pool's plain workers. Workers of different runtime_envs are never shared.
    runtime_env: dict[str, Any] | None = None
    # Names this run of the trial on its workers (set by its WorkerGroup): a worker obeys
    # control calls only for the run it holds, and a successor's start names the run it
    # follows, so a late call from an ended run never reaches the next trial.
    run_key: str = ""
    gpu_stats_interval_s: float = 0.0  # 0: no GPU statistics (tracking.gpu_stats_interval_s)


@dataclass(frozen=True)
class Report:
    """One record sent from rank 0 to the control plane (the scheduler's ``on_reports``)."""

    kind: str  # "metrics" | "checkpoint" | "event" | "system" (GPU statistics of a rank)
    step: int
    time: float
    metrics: dict[str, float] = field(default_factory=dict)
    checkpoint_uri: str | None = None
    message: str | None = None  # for "event": resize, restore, worker lost ...
