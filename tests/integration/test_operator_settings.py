"""``set-priority`` / ``set-max-slots`` through a real Scheduler actor: journaled before they
take effect, kept across pause and activate, shown by the CLI from the journal."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from resolute import cli
from resolute.config import parse_config
from resolute.errors import SchedulerError
from resolute.runtime import client
from resolute.runtime.journal import Journal

from .helpers import start_scheduler, stop_scheduler, wait_until

USERFNS = Path(__file__).parent / "userfns"


pytestmark = pytest.mark.integration


@pytest.fixture
def conn(ray_local, tmp_path):
    connection = start_scheduler(tmp_path)
    yield connection
    stop_scheduler(connection)


def test_settings_are_journaled_kept_across_pause_and_shown(conn, tmp_path, monkeypatch):
    data = {
        "name": "settings",
        "entrypoint": "elastic_fn:fixed",
        "context_dir": str(USERFNS),
        "storage": str(tmp_path / "storage"),
        "seed": 1,
        "hyperparameters": {"delay": 0.05},
        "searcher": {"name": "single", "metric": "loss", "max_time": 100_000},
        "resources": {"slots_per_trial": 1, "priority": 30, "max_slots": 2},
        "max_restarts": 0,
    }
    config = parse_config(yaml.safe_load(yaml.safe_dump(data)), context_dir=tmp_path)
    exp = client.submit(conn, config)
    journal = Journal(conn.journal_url)
    rec = journal.get_experiment(exp)
    assert (rec.priority, rec.max_slots) == (30, 2)  # from the config, at submit

    summary = client.call(conn, "set_priority", exp, 5)
    assert summary["priority"] == 5
    assert journal.get_experiment(exp).priority == 5
    summary = client.call(conn, "set_max_slots", exp, None)
    assert summary["max_slots"] is None and journal.get_experiment(exp).max_slots is None
    client.call(conn, "set_max_slots", exp, 3)
    with pytest.raises(SchedulerError, match="1..99"):
        client.call(conn, "set_priority", exp, 0)
    rec = journal.get_experiment(exp)
    assert (rec.priority, rec.max_slots) == (5, 3)  # the refused change left no trace

    # Pause (trial checkpointed, slots freed) and activate: the operator's values hold.
    wait_until(lambda: (journal.list_trials(exp)[0].last_step or 0) >= 3, 120, "training")
    client.call(conn, "pause", exp)
    wait_until(lambda: client.call(conn, "status", exp)["used_slots"] == 0, 60, "the pause")
    summary = client.call(conn, "activate", exp)
    assert (summary["priority"], summary["max_slots"]) == (5, 3)
    wait_until(lambda: client.call(conn, "status", exp)["used_slots"] == 1, 120, "the resume")
    client.call(conn, "kill", exp)
    wait_until(lambda: client.call(conn, "status", exp)["done"], 60, "the kill")
    rec = journal.get_experiment(exp)
    assert (rec.status.value, rec.priority, rec.max_slots) == ("STOPPED", 5, 3)

    monkeypatch.setenv("RESOLUTE_JOURNAL_URL", conn.journal_url)
    out = CliRunner().invoke(cli.main, ["experiment", "describe", str(exp)])
    assert out.exit_code == 0, out.output
    assert "priority 5  max slots 3" in out.output
