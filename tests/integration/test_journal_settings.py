"""Operator settings (priority, max_slots) in the journal, and opening a journal written at
schema version 1: upgraded in place, every row kept."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

from resolute import cli
from resolute.errors import JournalError, NotFound
from resolute.runtime.journal import SCHEMA_VERSION, Journal, sqlite_url
from resolute.runtime.journal_schema import DEFAULT_PRIORITY
from resolute.runtime.lifecycle import ExperimentStatus, TrialStatus

V1_SQL = Path(__file__).parent / "data" / "journal_v1.sql"


def old_journal(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path) as db:
        db.executescript(V1_SQL.read_text())
    return path


def _version(path: Path) -> int:
    with sqlite3.connect(path) as db:
        (value,) = db.execute(
            "SELECT value FROM resolute_meta WHERE key = 'schema_version'"
        ).fetchone()
    return int(value)


def test_settings_start_from_the_config_and_survive_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "resolute.db"
    with Journal(str(path)) as journal:
        plain = journal.create_experiment(name="a", config_yaml="x", seed=1, storage_root="/s")
        capped = journal.create_experiment(
            name="b", config_yaml="x", seed=1, storage_root="/s", priority=10, max_slots=4
        )
        rec = journal.get_experiment(plain)
        assert (rec.priority, rec.max_slots) == (DEFAULT_PRIORITY, None)
        journal.set_priority(plain, 3)
        journal.set_max_slots(plain, 2)
        journal.set_max_slots(capped, None)
    with Journal(str(path)) as journal:  # another process, later
        assert (
            journal.get_experiment(plain).priority,
            journal.get_experiment(plain).max_slots,
        ) == (
            3,
            2,
        )
        assert [(e.priority, e.max_slots) for e in journal.list_experiments()] == [
            (3, 2),
            (10, None),
        ]


def test_bad_settings_are_refused_and_change_nothing(tmp_path: Path) -> None:
    with Journal(str(tmp_path / "j.db")) as journal:
        eid = journal.create_experiment(
            name="a", config_yaml="x", seed=1, storage_root="/s", priority=20, max_slots=3
        )
        for bad in (0, 100):
            with pytest.raises(ValueError, match="1..99"):
                journal.set_priority(eid, bad)
        with pytest.raises(ValueError, match="at least 1"):
            journal.set_max_slots(eid, 0)
        with pytest.raises(NotFound, match="experiment 99"):
            journal.set_priority(99, 5)
        with pytest.raises(TypeError, match="priority"):
            journal.update_experiment(eid, priority=5)  # only through the checked setter
        rec = journal.get_experiment(eid)
        assert (rec.priority, rec.max_slots) == (20, 3)


def test_a_version_1_journal_is_upgraded_without_losing_data(tmp_path: Path) -> None:
    path = old_journal(tmp_path / "state" / "resolute.db")
    assert _version(path) == 1
    with Journal(str(path)) as journal:
        assert _version(path) == SCHEMA_VERSION == 2
        first, second = journal.list_experiments()
        # Backfilled from each experiment's own config, else the default.
        assert (first.priority, first.max_slots) == (7, 6)
        assert (second.priority, second.max_slots) == (DEFAULT_PRIORITY, None)
        # Every old field kept.
        assert (first.name, first.status, first.seed, first.storage_root) == (
            "mnist-asha",
            ExperimentStatus.COMPLETED,
            42,
            "/data/runs",
        )
        assert (first.mlflow_run_id, first.best_trial_id, first.best_metric, first.progress) == (
            "run-a",
            2,
            0.125,
            1.0,
        )
        assert (first.created_at, first.ended_at) == (1700000000.0, 1700000500.0)
        assert "priority: 7" in first.config_yaml
        assert journal.load_searcher_snapshot(1) == {"kind": "asha", "next_id": 3}
        assert journal.load_searcher_snapshot(2) is None
        assert (second.status, second.progress, second.ended_at) == (
            ExperimentStatus.PAUSED,
            0.25,
            None,
        )
        t2 = journal.get_trial(2)
        assert (t2.hparams, t2.status, t2.restarts, t2.error) == (
            {"lr": 0.01},
            TrialStatus.COMPLETED,
            1,
            "lost a node",
        )
        assert (t2.latest_checkpoint, t2.latest_checkpoint_step, t2.best_metric) == (
            "/data/runs/1/2/ckpt-9",
            9,
            0.125,
        )
        assert journal.get_trial(3).clone_from == 2
        assert [t.id for t in journal.list_trials(1)] == [1, 2]
        assert [c.uri for c in journal.list_checkpoints(2, include_deleted=True)] == [
            "/data/runs/1/2/ckpt-3",
            "/data/runs/1/2/ckpt-9",
        ]
        assert [c.step for c in journal.list_checkpoints(2)] == [9]

        # The upgraded journal works as a new one: settings, lifecycle, new rows.
        journal.set_priority(2, 5)
        journal.set_experiment_status(2, ExperimentStatus.ACTIVE)
        new = journal.create_experiment(name="c", config_yaml="x", seed=1, storage_root="/s")
        assert new == 6  # ids are never reused, gaps included
        trial = journal.create_trial(experiment_id=2, searcher_trial_id=2, hparams={}, seed=1)
        assert trial == 4
    with Journal(str(path)) as journal:  # opened again: already current, nothing redone
        assert _version(path) == SCHEMA_VERSION
        assert journal.get_experiment(2).priority == 5
        assert journal.get_experiment(2).status is ExperimentStatus.ACTIVE
        assert len(journal.list_experiments()) == 3


def test_processes_opening_an_old_journal_at_once_upgrade_it_once(tmp_path: Path) -> None:
    path = old_journal(tmp_path / "resolute.db")
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def open_it() -> None:
        try:
            barrier.wait()
            with Journal(sqlite_url(path)) as journal:
                assert journal.get_experiment(1).priority == 7
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_it) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with sqlite3.connect(path) as db:
        columns = [row[1] for row in db.execute("PRAGMA table_info(experiments)")]
    assert columns.count("priority") == 1 and columns.count("max_slots") == 1


def test_a_journal_from_a_newer_resolute_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    Journal(str(path)).close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE resolute_meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(JournalError, match="version 99.*upgrade resolute"):
        Journal(str(path))


def test_list_and_describe_show_the_settings_of_an_upgraded_journal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = old_journal(tmp_path / "resolute.db")
    monkeypatch.setenv("RESOLUTE_JOURNAL_URL", sqlite_url(path))
    runner = CliRunner()
    listing = runner.invoke(cli.main, ["experiment", "list"], catch_exceptions=False)
    assert listing.exit_code == 0, listing.output
    header, _, *rows = listing.output.splitlines()
    assert "priority" in header and "max slots" in header
    cells = {row.split()[0]: row.split() for row in rows}
    assert cells["1"][4:6] == ["7", "6"]
    assert cells["2"][4:6] == [str(DEFAULT_PRIORITY), "-"]

    with Journal(sqlite_url(path)) as journal:
        journal.set_max_slots(2, 3)
    described = runner.invoke(cli.main, ["experiment", "describe", "2"], catch_exceptions=False)
    assert described.exit_code == 0, described.output
    assert f"priority {DEFAULT_PRIORITY}  max slots 3" in described.output
    as_json = runner.invoke(
        cli.main, ["experiment", "describe", "1", "--json"], catch_exceptions=False
    )
    assert '"priority": 7' in as_json.output and '"max_slots": 6' in as_json.output
