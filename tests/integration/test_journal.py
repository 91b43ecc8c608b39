"""The journal on a real SQLite file: CRUD, lifecycle checks, and two processes at once."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from resolute.errors import IllegalTransition, JournalError, NotFound
from resolute.runtime.journal import SCHEMA_VERSION, Journal, sqlite_url
from resolute.runtime.lifecycle import ExperimentStatus, TrialStatus


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "resolute.db"


@pytest.fixture
def journal(db_path: Path) -> Journal:
    j = Journal(str(db_path))
    yield j
    j.close()


def _experiment(journal: Journal, name: str = "mnist-asha") -> int:
    return journal.create_experiment(
        name=name, config_yaml="name: x\n", seed=42, storage_root="/data/runs"
    )


def test_experiment_round_trip_and_fields(journal: Journal) -> None:
    eid = _experiment(journal)
    rec = journal.get_experiment(eid)
    assert (rec.id, rec.name, rec.config_yaml, rec.seed, rec.storage_root) == (
        eid,
        "mnist-asha",
        "name: x\n",
        42,
        "/data/runs",
    )
    assert rec.status is ExperimentStatus.ACTIVE
    assert rec.progress == 0.0 and rec.ended_at is None and rec.created_at > 0

    journal.update_experiment(
        eid, mlflow_run_id="abc123", best_trial_id=7, best_metric=0.25, progress=0.5
    )
    rec = journal.get_experiment(eid)
    assert (rec.mlflow_run_id, rec.best_trial_id, rec.best_metric, rec.progress) == (
        "abc123",
        7,
        0.25,
        0.5,
    )
    with pytest.raises(TypeError, match="status"):
        journal.update_experiment(eid, status="COMPLETED")

    other = _experiment(journal, "second")
    assert other > eid
    assert [e.id for e in journal.list_experiments()] == [eid, other]


def test_experiment_status_is_checked(journal: Journal) -> None:
    eid = _experiment(journal)
    journal.set_experiment_status(eid, ExperimentStatus.PAUSED)
    journal.set_experiment_status(eid, ExperimentStatus.ACTIVE)
    assert journal.get_experiment(eid).ended_at is None
    journal.set_experiment_status(eid, ExperimentStatus.COMPLETED)
    rec = journal.get_experiment(eid)
    assert rec.status is ExperimentStatus.COMPLETED and rec.ended_at is not None
    with pytest.raises(IllegalTransition, match=f"experiment {eid}.*COMPLETED.*ACTIVE"):
        journal.set_experiment_status(eid, ExperimentStatus.ACTIVE)
    assert journal.get_experiment(eid).status is ExperimentStatus.COMPLETED
    assert [e.id for e in journal.list_experiments(status=ExperimentStatus.ACTIVE)] == []


def test_searcher_snapshot_round_trip(journal: Journal) -> None:
    eid = _experiment(journal)
    assert journal.load_searcher_snapshot(eid) is None
    snap = {"rungs": [[1, 0.5], [2, 0.25]], "rng": {"state": 12345678901234}, "done": False}
    journal.save_searcher_snapshot(eid, snap)
    assert journal.load_searcher_snapshot(eid) == snap
    snap2 = {"rungs": [], "rng": None, "done": True}
    journal.save_searcher_snapshot(eid, snap2)
    assert journal.load_searcher_snapshot(eid) == snap2


def test_trials_have_global_ids_and_searcher_ids(journal: Journal) -> None:
    e1, e2 = _experiment(journal, "a"), _experiment(journal, "b")
    t1 = journal.create_trial(experiment_id=e1, searcher_trial_id=0, hparams={"lr": 0.1}, seed=1)
    t2 = journal.create_trial(experiment_id=e2, searcher_trial_id=0, hparams={"lr": 0.2}, seed=2)
    t3 = journal.create_trial(
        experiment_id=e1,
        searcher_trial_id=1,
        hparams={"lr": 0.3, "opt": {"name": "adam"}},
        seed=3,
        clone_from=t1,
    )
    assert len({t1, t2, t3}) == 3
    assert journal.trial_by_searcher_id(e1, 1).id == t3
    assert journal.trial_by_searcher_id(e2, 0).id == t2
    rec = journal.get_trial(t3)
    assert rec.hparams == {"lr": 0.3, "opt": {"name": "adam"}}
    assert (rec.experiment_id, rec.seed, rec.clone_from, rec.restarts) == (e1, 3, t1, 0)
    assert rec.status is TrialStatus.PENDING and rec.started_at is None
    assert [t.id for t in journal.list_trials(e1)] == [t1, t3]

    with pytest.raises(JournalError, match="constraint"):
        journal.create_trial(experiment_id=e1, searcher_trial_id=1, hparams={}, seed=0)
    with pytest.raises(NotFound, match="experiment 999"):
        journal.create_trial(experiment_id=999, searcher_trial_id=0, hparams={}, seed=0)
    with pytest.raises(NotFound, match="trial 999"):
        journal.create_trial(
            experiment_id=e1, searcher_trial_id=5, hparams={}, seed=0, clone_from=999
        )
    with pytest.raises(NotFound, match="searcher id 9"):
        journal.trial_by_searcher_id(e1, 9)


def test_trial_status_timestamps_and_errors(journal: Journal) -> None:
    eid = _experiment(journal)
    tid = journal.create_trial(experiment_id=eid, searcher_trial_id=0, hparams={}, seed=0)
    journal.set_trial_status(tid, TrialStatus.RUNNING)
    started = journal.get_trial(tid).started_at
    assert started is not None
    journal.set_trial_status(tid, TrialStatus.PAUSED)
    journal.set_trial_status(tid, TrialStatus.RUNNING)
    assert journal.get_trial(tid).started_at == started  # the first start is kept
    with pytest.raises(IllegalTransition, match=f"trial {tid}.*RUNNING.*PENDING"):
        journal.set_trial_status(tid, TrialStatus.PENDING)
    assert journal.get_trial(tid).status is TrialStatus.RUNNING

    journal.set_trial_status(tid, TrialStatus.ERRORED, error="ValueError: boom\n" + "x" * 10_000)
    rec = journal.get_trial(tid)
    assert rec.status is TrialStatus.ERRORED and rec.ended_at is not None
    assert rec.error is not None and rec.error.startswith("ValueError: boom")
    assert len(rec.error) <= 4000
    assert [t.id for t in journal.list_trials(eid, status=TrialStatus.ERRORED)] == [tid]


def test_update_trial_fields(journal: Journal) -> None:
    eid = _experiment(journal)
    tid = journal.create_trial(experiment_id=eid, searcher_trial_id=0, hparams={}, seed=0)
    journal.update_trial(
        tid, restarts=2, last_step=300, best_metric=0.125, best_step=200, mlflow_run_id="r1"
    )
    rec = journal.get_trial(tid)
    assert (rec.restarts, rec.last_step, rec.best_metric, rec.best_step, rec.mlflow_run_id) == (
        2,
        300,
        0.125,
        200,
        "r1",
    )
    with pytest.raises(TypeError, match="status"):
        journal.update_trial(tid, status="RUNNING")
    with pytest.raises(NotFound, match="trial 12345"):
        journal.update_trial(12345, restarts=1)


def test_checkpoints_and_latest(journal: Journal) -> None:
    eid = _experiment(journal)
    tid = journal.create_trial(experiment_id=eid, searcher_trial_id=0, hparams={}, seed=0)
    for step in (100, 200, 300):
        journal.record_checkpoint(tid, uri=f"/ck/{step}", step=step, metric=1 / step)
    rec = journal.get_trial(tid)
    assert (rec.latest_checkpoint, rec.latest_checkpoint_step) == ("/ck/300", 300)
    assert [c.step for c in journal.list_checkpoints(tid)] == [100, 200, 300]
    assert journal.list_checkpoints(tid)[0].metric == pytest.approx(0.01)

    journal.mark_checkpoint_deleted("/ck/100")  # not the latest: latest stays
    assert journal.get_trial(tid).latest_checkpoint == "/ck/300"
    journal.mark_checkpoint_deleted("/ck/300")  # the latest: falls back to the newest left
    rec = journal.get_trial(tid)
    assert (rec.latest_checkpoint, rec.latest_checkpoint_step) == ("/ck/200", 200)
    assert [c.uri for c in journal.list_checkpoints(tid)] == ["/ck/200"]
    assert [c.deleted for c in journal.list_checkpoints(tid, include_deleted=True)] == [
        True,
        False,
        True,
    ]
    journal.mark_checkpoint_deleted("/ck/200")
    assert journal.get_trial(tid).latest_checkpoint is None

    # Saved again under the same name after a restart: one row, live again, latest again.
    journal.record_checkpoint(trial_id=tid, uri="/ck/200", step=200, metric=0.5)
    assert [(c.uri, c.metric) for c in journal.list_checkpoints(tid)] == [("/ck/200", 0.5)]
    assert journal.get_trial(tid).latest_checkpoint == "/ck/200"
    with pytest.raises(NotFound, match="/ck/nope"):
        journal.mark_checkpoint_deleted("/ck/nope")
    with pytest.raises(NotFound, match="trial 777"):
        journal.record_checkpoint(trial_id=777, uri="/x", step=1)


def test_unknown_ids_say_what_to_do(journal: Journal) -> None:
    with pytest.raises(NotFound, match="experiment 5 does not exist.*resolute experiment list"):
        journal.get_experiment(5)
    with pytest.raises(NotFound, match="trial 5 does not exist"):
        journal.get_trial(5)
    with pytest.raises(NotFound):
        journal.set_experiment_status(5, ExperimentStatus.PAUSED)
    with pytest.raises(NotFound):
        journal.load_searcher_snapshot(5)


def test_reopen_keeps_everything_and_uses_wal(db_path: Path) -> None:
    with Journal(str(db_path)) as j:
        eid = _experiment(j)
        tid = j.create_trial(experiment_id=eid, searcher_trial_id=0, hparams={"a": 1}, seed=0)
        j.set_trial_status(tid, TrialStatus.RUNNING)
    with Journal(sqlite_url(db_path)) as j:
        assert j.get_trial(tid).status is TrialStatus.RUNNING
        assert j.get_experiment(eid).name == "mnist-asha"
    conn = sqlite3.connect(db_path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        version = conn.execute(
            "SELECT value FROM resolute_meta WHERE key = 'schema_version'"
        ).fetchone()[0]
        assert int(version) == SCHEMA_VERSION
        # A journal from a newer resolute is refused with what to do.
        conn.execute("UPDATE resolute_meta SET value = '99' WHERE key = 'schema_version'")
        conn.commit()
    finally:
        conn.close()
    with pytest.raises(JournalError, match="schema version 99.*upgrade resolute"):
        Journal(str(db_path))


def test_in_memory_and_bad_urls() -> None:
    with Journal("sqlite://") as j:
        eid = _experiment(j)
        assert j.get_experiment(eid).id == eid
    with pytest.raises(JournalError, match="SQLAlchemy URL"):
        Journal("nosuchdialect://host/db")


def test_two_journals_see_each_others_writes(db_path: Path) -> None:
    a, b = Journal(str(db_path)), Journal(str(db_path))
    try:
        eid = _experiment(a)
        tid = a.create_trial(experiment_id=eid, searcher_trial_id=0, hparams={}, seed=0)
        b.set_trial_status(tid, TrialStatus.RUNNING)
        assert a.get_trial(tid).status is TrialStatus.RUNNING
        # A stale decision made through the other handle is still checked against the truth.
        a.set_trial_status(tid, TrialStatus.COMPLETED)
        with pytest.raises(IllegalTransition):
            b.set_trial_status(tid, TrialStatus.PAUSED)
    finally:
        a.close()
        b.close()


_WRITER = textwrap.dedent(
    """
    import sys
    from resolute.runtime.journal import Journal
    from resolute.runtime.lifecycle import TrialStatus
    j = Journal(sys.argv[1])
    eid, base, n = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    for i in range(n):
        tid = j.create_trial(experiment_id=eid, searcher_trial_id=base + i, hparams={"i": i},
                             seed=i)
        j.set_trial_status(tid, TrialStatus.RUNNING)
        j.update_trial(tid, last_step=i)
    j.close()
    """
)


def test_another_process_writes_while_this_one_writes_and_reads(db_path: Path) -> None:
    """The scheduler actor and a CLI (or a second scheduler) are separate processes."""
    journal = Journal(str(db_path))
    try:
        eid = _experiment(journal)
        n = 40
        child = subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(db_path), str(eid), "1000", str(n)],
            stderr=subprocess.PIPE,
            text=True,
        )
        # Meanwhile this process writes from two threads, as the scheduler's loop and a
        # helper thread would.
        errors: list[BaseException] = []

        def write(base: int) -> None:
            try:
                for i in range(n):
                    tid = journal.create_trial(
                        experiment_id=eid, searcher_trial_id=base + i, hparams={}, seed=i
                    )
                    journal.set_trial_status(tid, TrialStatus.RUNNING)
                    journal.list_trials(eid)
            except BaseException as e:  # reported below, with the child's output
                errors.append(e)

        threads = [threading.Thread(target=write, args=(b,)) for b in (0, 500)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        _, stderr = child.communicate(timeout=120)
        assert child.returncode == 0, stderr
        assert not errors, errors
        trials = journal.list_trials(eid)
        assert len(trials) == 3 * n
        assert all(t.status is TrialStatus.RUNNING for t in trials)
        from_child = sorted(t.last_step for t in trials if t.searcher_trial_id >= 1000)
        assert from_child == list(range(n))
    finally:
        journal.close()
