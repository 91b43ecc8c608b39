"""The scheduler's per-trial state (no Ray)."""

from __future__ import annotations

from resolute.runtime.trial_run import TrialRun


def test_trial_run_drops_exact_replays_but_keeps_same_step_reports():
    tr = TrialRun(searcher_id=1, trial_id=1, hparams={}, seed=0, until=10)
    assert tr.first_time(3, {"train_loss": 0.5})
    assert tr.first_time(3, {"val_loss": 0.7})  # another report at the same step is kept
    assert not tr.first_time(3, {"train_loss": 0.5})  # the replayed copy is dropped
    for step in range(4, 200):
        assert tr.first_time(step, {"loss": 1.0 / step})
    assert len(tr.seen) <= 64
