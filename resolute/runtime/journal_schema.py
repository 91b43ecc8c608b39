"""The journal's tables, the records read from them, and the helpers that turn rows into
records. ``journal`` owns every connection and transaction; ``_ensure_schema`` runs in one.

Changing a table means a new ``SCHEMA_VERSION`` and a step in ``_MIGRATIONS`` that brings
a journal of the version before up to it, in the same transaction as the check: a journal
written by an older resolute is upgraded in place when opened, without losing a row. One
written by a newer resolute is refused.

Versions: 1, the first; 2, experiments' operator settings (``priority``, ``max_slots``:
what ``experiment set-priority`` / ``set-max-slots`` last set, else the config's).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import sqlalchemy as sa
import yaml
from sqlalchemy.engine import Connection

from resolute.config import ResourcesConfig
from resolute.errors import JournalError
from resolute.runtime.lifecycle import ExperimentStatus, TrialStatus

SCHEMA_VERSION = 2
DEFAULT_PRIORITY: int = ResourcesConfig.model_fields["priority"].default

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
    # Operator settings (version 2). Nullable only because a column added to a table with
    # rows must be: every row has a priority (the migration fills them in).
    sa.Column("priority", sa.Integer, nullable=True),
    sa.Column("max_slots", sa.Integer, nullable=True),  # None: no cap
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
_SETTINGS_FIELDS = frozenset({"priority", "max_slots"})
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
    priority: int  # 1..99, lower runs first
    max_slots: int | None  # the most slots its trials hold together; None: no cap


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
        if m["priority"] is None:  # written by another process while it migrated
            m["priority"] = DEFAULT_PRIORITY
    elif cls is TrialRecord:
        m["status"] = TrialStatus(m["status"])
    return cls(**{k: m[k] for k in cls.__dataclass_fields__})


def _new_id(result: sa.CursorResult[Any]) -> int:
    key = result.inserted_primary_key
    assert key is not None  # an INSERT of one row always has one
    return int(key[0])


def _ensure_schema(conn: Connection, url: str) -> None:
    """Create the tables of a new journal, or bring an existing one up to this version."""
    version_row = sa.select(_meta.c.value).where(_meta.c.key == "schema_version")
    existing = sa.inspect(conn).has_table(_experiments.name)
    found = conn.execute(version_row).scalar_one_or_none() if existing else None
    if found is None:
        _md.create_all(conn, checkfirst=True)
        conn.execute(_meta.insert().values(key="schema_version", value=str(SCHEMA_VERSION)))
        return
    version = int(found)
    if version > SCHEMA_VERSION:
        raise JournalError(
            f"the journal at {url} has schema version {version}, this resolute reads up to "
            f"version {SCHEMA_VERSION}: upgrade resolute"
        )
    while version < SCHEMA_VERSION:
        _MIGRATIONS[version](conn)
        version += 1
        conn.execute(
            _meta.update().where(_meta.c.key == "schema_version").values(value=str(version))
        )
    _md.create_all(conn, checkfirst=True)  # tables a later version added


def _add_operator_settings(conn: Connection) -> None:
    """Version 1 -> 2: add ``priority`` and ``max_slots`` to experiments, each row's taken
    from its own config (what the scheduler ran it with, no operator change being known)."""
    conn.execute(sa.text("ALTER TABLE experiments ADD COLUMN priority INTEGER"))
    conn.execute(sa.text("ALTER TABLE experiments ADD COLUMN max_slots INTEGER"))
    rows = conn.execute(sa.select(_experiments.c.id, _experiments.c.config_yaml)).all()
    for row in rows:
        priority, max_slots = _settings_in_config(row.config_yaml)
        conn.execute(
            _experiments.update()
            .where(_experiments.c.id == row.id)
            .values(priority=priority, max_slots=max_slots)
        )


def _settings_in_config(config_yaml: str) -> tuple[int, int | None]:
    """``resources.priority`` and ``resources.max_slots`` of a journaled config; the
    defaults where the text has none or cannot be read (the config was validated when it
    was submitted, perhaps by an older resolute: only these two values are looked at)."""
    try:
        data = yaml.safe_load(config_yaml)
    except yaml.YAMLError:
        return DEFAULT_PRIORITY, None
    res = data.get("resources") if isinstance(data, dict) else None
    res = res if isinstance(res, dict) else {}
    priority, max_slots = res.get("priority"), res.get("max_slots")
    return (
        priority if isinstance(priority, int) and 1 <= priority <= 99 else DEFAULT_PRIORITY,
        max_slots if isinstance(max_slots, int) and max_slots >= 1 else None,
    )


# Step ``v`` brings a journal of version ``v`` to ``v + 1``.
_MIGRATIONS: dict[int, Callable[[Connection], None]] = {1: _add_operator_settings}
