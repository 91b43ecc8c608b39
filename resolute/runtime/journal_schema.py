"""The journal's tables, the records read from them, and the helpers that turn rows into
records. ``journal`` owns every connection and transaction; ``_ensure_schema`` runs in one.

Changing a table means a new ``SCHEMA_VERSION``: the journal refuses a database written
with another one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from resolute.errors import JournalError
from resolute.runtime.lifecycle import ExperimentStatus, TrialStatus

SCHEMA_VERSION = 1

_md = sa.MetaData()

_meta = sa.Table(
    "resolute_meta",
    _md,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.String(255), nullable=False),
)

# sqlite_autoincrement: ids are never reused, since storage paths and MLflow tags carry them.
_experiments = sa.Table(
    "experiments",
    _md,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("config_yaml", sa.Text, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("searcher_snapshot", sa.JSON, nullable=True),
    sa.Column("seed", sa.BigInteger, nullable=False),
    sa.Column("storage_root", sa.Text, nullable=False),
    sa.Column("mlflow_run_id", sa.String(64), nullable=True),
    sa.Column("best_trial_id", sa.Integer, nullable=True),
    sa.Column("best_metric", sa.Float, nullable=True),
    sa.Column("progress", sa.Float, nullable=False, default=0.0),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("ended_at", sa.Float, nullable=True),
    sqlite_autoincrement=True,
)

_trials = sa.Table(
    "trials",
    _md,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("experiment_id", sa.Integer, sa.ForeignKey("experiments.id"), nullable=False),
    sa.Column("searcher_trial_id", sa.Integer, nullable=False),
    sa.Column("hparams", sa.JSON, nullable=False),
    sa.Column("seed", sa.BigInteger, nullable=False),
    sa.Column("clone_from", sa.Integer, sa.ForeignKey("trials.id"), nullable=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("restarts", sa.Integer, nullable=False, default=0),
    sa.Column("latest_checkpoint", sa.Text, nullable=True),
    sa.Column("latest_checkpoint_step", sa.BigInteger, nullable=True),
    sa.Column("best_metric", sa.Float, nullable=True),
    sa.Column("best_step", sa.BigInteger, nullable=True),
    sa.Column("last_step", sa.BigInteger, nullable=True),
    sa.Column("mlflow_run_id", sa.String(64), nullable=True),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("started_at", sa.Float, nullable=True),
    sa.Column("ended_at", sa.Float, nullable=True),
    sa.UniqueConstraint("experiment_id", "searcher_trial_id", name="uq_trial_searcher_id"),
    sqlite_autoincrement=True,
)

_checkpoints = sa.Table(
    "checkpoints",
    _md,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("trial_id", sa.Integer, sa.ForeignKey("trials.id"), nullable=False, index=True),
    sa.Column("uri", sa.Text, nullable=False, unique=True),
    sa.Column("step", sa.BigInteger, nullable=False),
    sa.Column("metric", sa.Float, nullable=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("deleted", sa.Boolean, nullable=False, default=False),
)

_EXPERIMENT_FIELDS = frozenset(
    {"config_yaml", "storage_root", "mlflow_run_id", "best_trial_id", "best_metric", "progress"}
)
_TRIAL_FIELDS = frozenset(
    {"restarts", "last_step", "best_metric", "best_step", "mlflow_run_id", "error"}
)
_SNAPSHOT_FIELD = frozenset({"searcher_snapshot"})


@dataclass(frozen=True)
class ExperimentRecord:
    """One experiment row. The searcher snapshot is left out: ``load_searcher_snapshot``."""

    id: int
    name: str
    config_yaml: str
    status: ExperimentStatus
    seed: int
    storage_root: str
    mlflow_run_id: str | None
    best_trial_id: int | None
    best_metric: float | None
    progress: float
    created_at: float  # seconds since the epoch
    ended_at: float | None


@dataclass(frozen=True)
class TrialRecord:
    id: int  # global, unique across experiments
    experiment_id: int
    searcher_trial_id: int  # the searcher's id, unique within the experiment
    hparams: dict[str, Any]
    seed: int
    clone_from: int | None  # global id of the trial whose checkpoint it started from
    status: TrialStatus
    restarts: int
    latest_checkpoint: str | None
    latest_checkpoint_step: int | None
    best_metric: float | None
    best_step: int | None
    last_step: int | None
    mlflow_run_id: str | None
    error: str | None
    created_at: float
    started_at: float | None
    ended_at: float | None


@dataclass(frozen=True)
class CheckpointRecord:
    id: int
    trial_id: int
    uri: str
    step: int
    metric: float | None
    created_at: float
    deleted: bool


_R = TypeVar("_R", ExperimentRecord, TrialRecord, CheckpointRecord)


def _record(cls: type[_R], row: sa.Row[Any]) -> _R:
    m = dict(row._mapping)
    if cls is ExperimentRecord:
        m["status"] = ExperimentStatus(m["status"])
    elif cls is TrialRecord:
        m["status"] = TrialStatus(m["status"])
    return cls(**{k: m[k] for k in cls.__dataclass_fields__})


def _new_id(result: sa.CursorResult[Any]) -> int:
    key = result.inserted_primary_key
    assert key is not None  # an INSERT of one row always has one
    return int(key[0])


def _ensure_schema(conn: Connection, url: str) -> None:
    """Create the missing tables of a new journal, or check an existing one's version."""
    _md.create_all(conn, checkfirst=True)
    found = conn.execute(
        sa.select(_meta.c.value).where(_meta.c.key == "schema_version")
    ).scalar_one_or_none()
    if found is None:
        conn.execute(_meta.insert().values(key="schema_version", value=str(SCHEMA_VERSION)))
    elif int(found) != SCHEMA_VERSION:
        newer = int(found) > SCHEMA_VERSION
        raise JournalError(
            f"the journal at {url} has schema version {found}, this resolute "
            f"writes version {SCHEMA_VERSION}: "
            + ("upgrade resolute" if newer else "open it with the resolute that made it")
        )
