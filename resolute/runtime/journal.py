"""Durable control-plane state: experiments, trials and their checkpoints.

The scheduler writes here *before* a decision takes effect, so a restarted scheduler (or the
CLI, from another process) reads the truth. Every write is one committed transaction and
returns only after the commit. Status changes are checked against ``lifecycle``.

Any SQLAlchemy URL works; the default is a SQLite file, opened in WAL mode with a busy
timeout so that the scheduler actor and a CLI process can use it at the same time (WAL
needs a local disk, not NFS). Read-then-write transactions take the write lock up front
(``BEGIN IMMEDIATE`` on SQLite, ``SELECT ... FOR UPDATE`` elsewhere) so two writers never
interleave between the check and the write.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, Engine

from resolute.errors import JournalError, NotFound
from resolute.runtime.journal_schema import (
    _EXPERIMENT_FIELDS,
    _SETTINGS_FIELDS,
    _SNAPSHOT_FIELD,
    _TRIAL_FIELDS,
    DEFAULT_PRIORITY,
    SCHEMA_VERSION,
    CheckpointRecord,
    ExperimentRecord,
    TrialRecord,
    _checkpoints,
    _ensure_schema,
    _experiments,
    _new_id,
    _record,
    _trials,
)
from resolute.runtime.lifecycle import ExperimentStatus, TrialStatus, check_transition

__all__ = [
    "SCHEMA_VERSION",
    "CheckpointRecord",
    "ExperimentRecord",
    "Journal",
    "TrialRecord",
    "sqlite_url",
]

_ERROR_TEXT_LIMIT = 4000

_NOT_FOUND_HINT = {
    "experiments": ("experiment", "resolute experiment list"),
    "trials": ("trial", "resolute trial list <experiment>"),
}


def sqlite_url(path: str | Path) -> str:
    """The SQLAlchemy URL of a SQLite file (made absolute)."""
    return f"sqlite:///{Path(path).expanduser().resolve()}"


class Journal:
    """The control plane's database. Safe to share between threads; open it in as many
    processes as needed. ``url``: an SQLAlchemy URL, or a plain path to a SQLite file."""

    def __init__(self, url: str, *, echo: bool = False) -> None:
        if "://" not in url:
            url = sqlite_url(url)
        self.url = url
        try:
            parsed = sa.make_url(url)
            self._sqlite = parsed.get_backend_name() == "sqlite"
            in_memory = self._sqlite and parsed.database in (None, "", ":memory:")
            kwargs: dict[str, Any] = {"echo": echo}
            if in_memory:
                # One shared connection, else every pooled connection sees its own empty db.
                kwargs.update(poolclass=sa.StaticPool, connect_args={"check_same_thread": False})
            elif self._sqlite:
                if parsed.database:
                    Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
                kwargs["connect_args"] = {"timeout": 30.0, "check_same_thread": False}
            self._engine: Engine = sa.create_engine(parsed, **kwargs)
        except (sa_exc.ArgumentError, sa_exc.NoSuchModuleError, ImportError) as e:
            raise JournalError(
                f"cannot open the journal at {url!r}: {e}. Give an SQLAlchemy URL such as "
                "sqlite:////abs/path/resolute.db or postgresql://user@host/db"
            ) from e
        if self._sqlite:
            self._install_sqlite_hooks(wal=not in_memory)
        self._writer = self._engine.execution_options(resolute_write=True)
        self._create_schema()

    def _install_sqlite_hooks(self, *, wal: bool) -> None:
        @sa.event.listens_for(self._engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            # SQLAlchemy, not the sqlite3 module, emits BEGIN (see _on_begin).
            dbapi_conn.isolation_level = None
            cursor = dbapi_conn.cursor()
            if wal:
                cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.close()

        @sa.event.listens_for(self._engine, "begin")
        def _on_begin(conn: Connection) -> None:
            # A deferred transaction that reads and then writes can fail with SQLITE_BUSY
            # without waiting; IMMEDIATE takes the write lock first and honours busy_timeout.
            immediate = conn.get_execution_options().get("resolute_write", False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        try:
            with self._writer.begin() as conn:
                yield conn
        except sa_exc.OperationalError as e:
            raise JournalError(
                f"journal write failed ({self.url}): {e.orig}. If another process holds "
                "the database locked, retry; if the disk is full or read-only, fix that first"
            ) from e
        except sa_exc.IntegrityError as e:
            raise JournalError(f"journal write refused by a constraint: {e.orig}") from e

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        try:
            with self._engine.connect() as conn:
                yield conn
        except sa_exc.OperationalError as e:
            raise JournalError(f"journal read failed ({self.url}): {e.orig}") from e

    def _create_schema(self) -> None:
        with self._write() as conn:
            _ensure_schema(conn, self.url)

    def close(self) -> None:
        self._engine.dispose()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _row(self, conn: Connection, table: sa.Table, key: int, *, lock: bool = False) -> Any:
        query = sa.select(table).where(table.c.id == key)
        row = conn.execute(query.with_for_update() if lock else query).first()
        if row is None:
            kind, listing = _NOT_FOUND_HINT[table.name]
            raise NotFound(
                f"{kind} {key} does not exist in the journal ({self.url}); "
                f"`{listing}` shows the known ones"
            )
        return row

    def _update(
        self, table: sa.Table, key: int, fields: dict[str, Any], allowed: frozenset[str]
    ) -> None:
        unknown = set(fields) - allowed
        if unknown:
            raise TypeError(
                f"cannot set {sorted(unknown)} on {table.name}; settable: {sorted(allowed)}"
            )
        if not fields:
            return
        with self._write() as conn:
            self._row(conn, table, key, lock=True)
            conn.execute(table.update().where(table.c.id == key).values(**fields))

    # --- experiments -----------------------------------------------------------------

    def create_experiment(
        self,
        *,
        name: str,
        config_yaml: str,
        seed: int,
        storage_root: str,
        priority: int = DEFAULT_PRIORITY,
        max_slots: int | None = None,
    ) -> int:
        """Journal a new ACTIVE experiment; returns its id. ``priority`` and ``max_slots``:
        its config's, until an operator changes them (``set_priority``, ``set_max_slots``)."""
        values: dict[str, Any] = {"name": name, "config_yaml": config_yaml, "seed": seed}
        values |= {"storage_root": storage_root, "status": ExperimentStatus.ACTIVE.value}
        values |= {"priority": priority, "max_slots": max_slots}
        with self._write() as conn:
            result = conn.execute(
                _experiments.insert().values(progress=0.0, created_at=time.time(), **values)
            )
            return _new_id(result)

    def get_experiment(self, experiment_id: int) -> ExperimentRecord:
        with self._read() as conn:
            return _record(ExperimentRecord, self._row(conn, _experiments, experiment_id))

    def list_experiments(self, *, status: ExperimentStatus | None = None) -> list[ExperimentRecord]:
        query = sa.select(_experiments).order_by(_experiments.c.id)
        if status is not None:
            query = query.where(_experiments.c.status == status.value)
        with self._read() as conn:
            return [_record(ExperimentRecord, r) for r in conn.execute(query)]

    def set_experiment_status(self, experiment_id: int, status: ExperimentStatus) -> None:
        """Move an experiment (checked against the lifecycle); a final state stamps
        ``ended_at``."""
        with self._write() as conn:
            row = self._row(conn, _experiments, experiment_id, lock=True)
            old = ExperimentStatus(row.status)
            check_transition(old, status, subject=f"experiment {experiment_id}")
            values: dict[str, Any] = {"status": status.value}
            if status.is_terminal:
                values["ended_at"] = time.time()
            conn.execute(
                _experiments.update().where(_experiments.c.id == experiment_id).values(**values)
            )

    def update_experiment(self, experiment_id: int, **fields: Any) -> None:
        """Set plain fields: config_yaml, storage_root, mlflow_run_id, best_trial_id,
        best_metric, progress (priority and max_slots have their own checked setters). Status
        has its own checked method."""
        self._update(_experiments, experiment_id, fields, _EXPERIMENT_FIELDS)

    def set_priority(self, experiment_id: int, priority: int) -> None:
        """Journal an operator's new priority for an experiment (1..99, lower runs first)."""
        if not 1 <= priority <= 99:
            raise ValueError(f"priority must be 1..99, got {priority}")
        self._update(_experiments, experiment_id, {"priority": priority}, _SETTINGS_FIELDS)

    def set_max_slots(self, experiment_id: int, max_slots: int | None) -> None:
        """Journal an operator's new slot cap for an experiment (None: no cap)."""
        if max_slots is not None and max_slots < 1:
            raise ValueError(f"max_slots must be at least 1 (or None), got {max_slots}")
        self._update(_experiments, experiment_id, {"max_slots": max_slots}, _SETTINGS_FIELDS)

    def save_searcher_snapshot(self, experiment_id: int, snapshot: dict[str, Any]) -> None:
        self._update(_experiments, experiment_id, {"searcher_snapshot": snapshot}, _SNAPSHOT_FIELD)

    def load_searcher_snapshot(self, experiment_id: int) -> dict[str, Any] | None:
        """The last saved snapshot, or None when none was saved yet."""
        with self._read() as conn:
            snapshot: dict[str, Any] | None
            snapshot = self._row(conn, _experiments, experiment_id).searcher_snapshot
            return snapshot

    # --- trials ----------------------------------------------------------------------

    def create_trial(
        self,
        *,
        experiment_id: int,
        searcher_trial_id: int,
        hparams: dict[str, Any],
        seed: int,
        clone_from: int | None = None,
    ) -> int:
        """Journal a new PENDING trial; returns its global id."""
        values: dict[str, Any] = {"experiment_id": experiment_id}
        values |= {
            "searcher_trial_id": searcher_trial_id,
            "hparams": hparams,
            "seed": seed,
            "clone_from": clone_from,
        }
        with self._write() as conn:
            self._row(conn, _experiments, experiment_id)
            if clone_from is not None:
                self._row(conn, _trials, clone_from)
            result = conn.execute(
                _trials.insert().values(
                    status=TrialStatus.PENDING.value, restarts=0, created_at=time.time(), **values
                )
            )
            return _new_id(result)

    def get_trial(self, trial_id: int) -> TrialRecord:
        with self._read() as conn:
            return _record(TrialRecord, self._row(conn, _trials, trial_id))

    def list_trials(
        self, experiment_id: int, *, status: TrialStatus | None = None
    ) -> list[TrialRecord]:
        query = sa.select(_trials).where(_trials.c.experiment_id == experiment_id)
        if status is not None:
            query = query.where(_trials.c.status == status.value)
        with self._read() as conn:
            return [_record(TrialRecord, r) for r in conn.execute(query.order_by(_trials.c.id))]

    def trial_by_searcher_id(self, experiment_id: int, searcher_trial_id: int) -> TrialRecord:
        query = sa.select(_trials).where(
            _trials.c.experiment_id == experiment_id,
            _trials.c.searcher_trial_id == searcher_trial_id,
        )
        with self._read() as conn:
            row = conn.execute(query).first()
        if row is None:
            raise NotFound(
                f"experiment {experiment_id} has no trial with searcher id {searcher_trial_id}"
            )
        return _record(TrialRecord, row)

    def set_trial_status(
        self, trial_id: int, status: TrialStatus, *, error: str | None = None
    ) -> None:
        """Move a trial (checked against the lifecycle). The first RUNNING stamps
        ``started_at``, a final state ``ended_at``; ``error`` is kept (shortened) if given."""
        with self._write() as conn:
            row = self._row(conn, _trials, trial_id, lock=True)
            check_transition(TrialStatus(row.status), status, subject=f"trial {trial_id}")
            now = time.time()
            values: dict[str, Any] = {"status": status.value}
            if status is TrialStatus.RUNNING and row.started_at is None:
                values["started_at"] = now
            if status.is_terminal:
                values["ended_at"] = now
            if error is not None:
                values["error"] = error[:_ERROR_TEXT_LIMIT]
            conn.execute(_trials.update().where(_trials.c.id == trial_id).values(**values))

    def update_trial(self, trial_id: int, **fields: Any) -> None:
        """Set plain fields: restarts, last_step, best_metric, best_step, mlflow_run_id,
        error. Status and checkpoints have their own methods."""
        if fields.get("error") is not None:
            fields["error"] = str(fields["error"])[:_ERROR_TEXT_LIMIT]
        self._update(_trials, trial_id, fields, _TRIAL_FIELDS)

    # --- checkpoints -----------------------------------------------------------------

    def record_checkpoint(
        self, trial_id: int, *, uri: str, step: int, metric: float | None = None
    ) -> None:
        """Journal a complete checkpoint and make it the trial's latest. Recording a uri
        again (a checkpoint saved again under the same name) replaces its row."""
        values = {"trial_id": trial_id, "step": step, "metric": metric, "deleted": False}
        values["created_at"] = time.time()
        with self._write() as conn:
            self._row(conn, _trials, trial_id, lock=True)
            existing = conn.execute(
                sa.select(_checkpoints.c.id).where(_checkpoints.c.uri == uri)
            ).scalar_one_or_none()
            if existing is None:
                conn.execute(_checkpoints.insert().values(uri=uri, **values))
            else:
                conn.execute(
                    _checkpoints.update().where(_checkpoints.c.id == existing).values(**values)
                )
            conn.execute(
                _trials.update()
                .where(_trials.c.id == trial_id)
                .values(latest_checkpoint=uri, latest_checkpoint_step=step)
            )

    def list_checkpoints(
        self, trial_id: int, *, include_deleted: bool = False
    ) -> list[CheckpointRecord]:
        """The trial's checkpoints, oldest step first."""
        query = sa.select(_checkpoints).where(_checkpoints.c.trial_id == trial_id)
        if not include_deleted:
            query = query.where(_checkpoints.c.deleted == sa.false())
        query = query.order_by(_checkpoints.c.step, _checkpoints.c.id)
        with self._read() as conn:
            return [_record(CheckpointRecord, r) for r in conn.execute(query)]

    def mark_checkpoint_deleted(self, uri: str) -> None:
        """Record that a checkpoint's files are gone. If it was its trial's latest, the
        newest remaining checkpoint becomes the latest (or none)."""
        ck = _checkpoints.c
        with self._write() as conn:
            row = conn.execute(sa.select(_checkpoints).where(ck.uri == uri)).first()
            if row is None:
                raise NotFound(f"no checkpoint {uri!r} is recorded in the journal ({self.url})")
            conn.execute(_checkpoints.update().where(ck.id == row.id).values(deleted=True))
            trial = self._row(conn, _trials, row.trial_id, lock=True)
            if trial.latest_checkpoint != uri:
                return
            newest = conn.execute(
                sa.select(ck.uri, ck.step)
                .where(ck.trial_id == row.trial_id, ck.deleted == sa.false())
                .order_by(ck.created_at.desc(), ck.id.desc())
                .limit(1)
            ).first()
            conn.execute(
                _trials.update()
                .where(_trials.c.id == row.trial_id)
                .values(
                    latest_checkpoint=newest.uri if newest else None,
                    latest_checkpoint_step=newest.step if newest else None,
                )
            )
