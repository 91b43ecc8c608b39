"""What the scheduler does with a trial's reports: metrics to tracking and the journal,
results to the searcher, checkpoints recorded and pruned by the keep policy.

A mixin of ``ExperimentRun`` (it uses that class's journal, tracker, storage and trials)."""

from __future__ import annotations

import logging
import math
import time
from typing import TYPE_CHECKING, Any

from resolute.elastic.spec import Report
from resolute.runtime.checkpoint_policy import checkpoints_to_delete
from resolute.runtime.lifecycle import TrialStatus
from resolute.runtime.searcher_actor import Event, ResultEvent
from resolute.runtime.trial_run import TrialRun
from resolute.search.base import rank_value

if TYPE_CHECKING:
    from resolute.runtime.experiment import ExperimentRun

log = logging.getLogger("resolute.scheduler")


class ReportHandling:
    async def on_reports(self: ExperimentRun, trial_id: int, reports: list[Report]) -> None:
        tr = self.by_global.get(trial_id)
        if tr is None:
            log.warning("reports for unknown trial %s dropped", trial_id)
            return
        metric = self.config.searcher.metric
        events: list[Event] = []
        at_target: set[int] = set()
        before = self.best_trial
        best_before = (before.trial_id, before.best) if before else None
        for rep in reports:
            if rep.kind == "metrics" and not tr.first_time(rep.step, rep.metrics):
                continue  # a survivor's replay of what the lost chief already sent
            if rep.kind == "metrics":
                tr.last_step = max(tr.last_step, rep.step)
                self.tracker.log_metrics(tr.trial_id, rep.step, rep.metrics)
                value = rep.metrics.get(metric)
                if value is not None:
                    tr.metric_at[rep.step] = float(value)
                    self._label_checkpoint(tr, rep.step, float(value))
                    if not math.isnan(value):
                        self._update_best(tr, float(value), rep.step)
                # Results of a trial that is winding down are not the searcher's business.
                if tr.request is None and tr.status == TrialStatus.RUNNING:
                    events.append(ResultEvent(tr.searcher_id, rep.step, dict(rep.metrics)))
                    if value is not None and rep.time >= tr.until:
                        at_target.add(tr.searcher_id)
            elif rep.kind == "checkpoint" and rep.checkpoint_uri:
                tr.latest_checkpoint = rep.checkpoint_uri
                value = rep.metrics.get(metric, tr.metric_at.get(rep.step))
                tr.unlabelled = (rep.checkpoint_uri, rep.step) if value is None else None
                self.journal.record_checkpoint(
                    tr.trial_id, uri=rep.checkpoint_uri, step=rep.step, metric=value
                )
                self.tracker.log_checkpoint(tr.trial_id, rep.checkpoint_uri, rep.step)
                self._gc_checkpoints(tr)
            elif rep.kind == "system":
                # A rank's GPU statistics: tracked, never the searcher's business.
                self.tracker.log_metrics(tr.trial_id, rep.step, rep.metrics)
            elif rep.kind == "event":
                log.info("trial %s: %s", tr.trial_id, rep.message)
        # Journaled while the searcher thinks (the loop waits for its answer, which a trial
        # may be blocked on): these records only inform (the CLI, a restart), nothing starts
        # or stops on them.
        fields: dict[str, Any] = {"last_step": tr.last_step}
        if tr.best_step is not None:
            fields |= {"best_metric": tr.best, "best_step": tr.best_step}
        self._journal_later(self.journal.update_trial, tr.trial_id, **fields)
        best = self.best_trial
        if best is not None and (best.trial_id, best.best) != best_before:
            self._journal_later(
                self.journal.update_experiment,
                self.id,
                best_trial_id=best.trial_id,
                best_metric=best.best,
            )
        async with self._lock:
            await self._feed(events, at_target)

    def _update_best(self: ExperimentRun, tr: TrialRun, value: float, step: int) -> None:
        smaller = self.config.searcher.smaller_is_better
        score = rank_value(value, smaller_is_better=smaller)
        if tr.best is None or score < rank_value(tr.best, smaller_is_better=smaller):
            tr.best, tr.best_step = value, step
        best = self.best_trial
        if best is None or score < rank_value(best.best, smaller_is_better=smaller):
            self.best_trial = tr

    def _label_checkpoint(self: ExperimentRun, tr: TrialRun, step: int, value: float) -> None:
        """A checkpoint saved just before the report of its step gets that step's metric
        (the keep=best policy ranks checkpoints by it)."""
        if tr.unlabelled is None or tr.unlabelled[1] != step:
            return
        uri, tr.unlabelled = tr.unlabelled[0], None
        self.journal.record_checkpoint(tr.trial_id, uri=uri, step=step, metric=value)
        self._gc_checkpoints(tr)

    def _gc_checkpoints(self: ExperimentRun, tr: TrialRun) -> None:
        policy = self.config.checkpoint
        # A resume starts from the latest; a clone not started yet from its donor's.
        protected = {tr.latest_checkpoint or ""}
        protected |= {t.latest_checkpoint or "" for t in self.trials.values() if t.live}
        doomed = checkpoints_to_delete(
            self.journal.list_checkpoints(tr.trial_id),
            keep=policy.keep,
            keep_count=policy.keep_count,
            smaller_is_better=self.config.searcher.smaller_is_better,
            protected=protected,
        )
        for uri in doomed:
            try:
                self.storage.delete_checkpoint(uri)
                self.journal.mark_checkpoint_deleted(uri)
            except Exception:
                log.exception("could not delete checkpoint %s", uri)

    def best_checkpoint(self: ExperimentRun) -> str | None:
        """The best trial's checkpoint with the best metric (else its latest)."""
        best = self.best_trial
        if best is None:
            return None
        smaller = self.config.searcher.smaller_is_better
        ckpts = self.journal.list_checkpoints(best.trial_id)
        if not ckpts:
            return best.latest_checkpoint
        top = min(ckpts, key=lambda c: (rank_value(c.metric, smaller_is_better=smaller), -c.step))
        return top.uri

    def summary(self: ExperimentRun) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for tr in self.trials.values():
            key = "QUEUED" if tr.queued and tr.live else tr.status.value
            counts[key] = counts.get(key, 0) + 1
        best = self.best_trial
        return {
            "id": self.id,
            "name": self.config.name,
            "status": self.status.value,
            "progress": self.progress,
            "counts": counts,
            "trials": len(self.trials),
            "best_trial": best.trial_id if best else None,
            "best_metric": best.best if best else None,
            "best_hparams": best.hparams if best else None,
            "best_checkpoint": self.best_checkpoint(),
            "metric": self.config.searcher.metric,
            "elapsed": (self.ended_at or time.time()) - self.started_at,
            "error": self.error,
            "done": self.finished.is_set(),
            "priority": self.priority,
            "weight": self.weight,
            "max_slots": self.max_slots,
            "used_slots": self.used_slots(),
            "slot_seconds": self.slot_seconds
            + (time.monotonic() - self._accounted_at) * self.used_slots(),
        }
