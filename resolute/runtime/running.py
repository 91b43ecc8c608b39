"""Running a trial's worker group: starting it, resizing it in place, preempting it, and
turning its outcome (completed, paused, stopped, errored) into status changes, restarts and
searcher events.

A mixin of ``ExperimentRun`` (it uses that class's journal, tracker, trials and searcher)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from resolute.elastic.spec import TrialSpec
from resolute.errors import EntrypointError, ResourcesUnavailable
from resolute.runtime.lifecycle import ExperimentStatus, TrialStatus
from resolute.runtime.searcher_actor import Event, ExitEvent
from resolute.runtime.trial_run import FailedOutcome, TrialRun
from resolute.search.base import ExitReason, StopReason

if TYPE_CHECKING:
    from resolute.elastic.placement import Shape
    from resolute.runtime.experiment import ExperimentRun

log = logging.getLogger("resolute.scheduler")


class TrialRunning:
    def start_trial(self: ExperimentRun, tr: TrialRun, n: int) -> None:
        """Start a queued trial with ``n`` ranks (the allocator found the slots)."""
        tr.queued = False
        tr.seen.clear()
        self._account()
        tr.slots = n  # counted as used while its group starts
        # A start is not a resize: a trial that started small grows as soon as slots idle.
        tr.last_resize = None
        self._spawn(self._run_trial(tr, n))

    def preempt(self: ExperimentRun, tr: TrialRun) -> None:
        """Checkpoint and release a running trial; it queues again to resume later."""
        if tr.slots and tr.request is None:
            tr.request = "preempt"
            self._decision(tr, "preempted")
            if tr.group is not None:
                tr.group.request_stop(pause=True)

    def yield_waiting(self: ExperimentRun, wanted: int) -> None:
        """Trials waiting at their target for a decision hold slots that queued trials need
        (PBT waits for its whole population): checkpoint them and give the slots back. They
        resume from that checkpoint when the searcher says Continue."""
        for tr in self.trials.values():
            if wanted <= 0:
                return
            if tr.waiting and tr.group is not None and tr.request is None:
                tr.request = "yield"
                tr.group.request_stop(pause=True, ending=True)
                self._decision(tr, "yield slots while waiting")
                wanted -= 1

    def resize(self: ExperimentRun, tr: TrialRun, n: int) -> None:
        """Grow or shrink a running elastic trial in place (no restart)."""
        if tr.group is None or tr.request is not None or tr.resizing:
            return
        tr.resizing = True
        self._spawn(self._resize(tr, n))

    async def _resize(self: ExperimentRun, tr: TrialRun, n: int) -> None:
        group, before = tr.group, tr.slots
        if n > before:
            self._account()
            tr.slots = n  # reserve the new slots while the new ranks warm up
        refused = False
        try:
            done = bool(await group.resize(n))
            refused = not done
        except ResourcesUnavailable as exc:
            log.warning("trial %s: resize to %d not possible now: %s", tr.trial_id, n, exc)
            done = False
        except Exception:
            log.exception("trial %s: resize to %d failed", tr.trial_id, n)
            done = False
        finally:
            tr.resizing = False
        if done:
            self._account()
            tr.slots, tr.last_resize, tr.last_grew = n, time.monotonic(), n > before
            self._decision(tr, f"resized {before} -> {n}")
        elif tr.group is group:
            self._account()
            tr.slots = before
            # Turned down by user code that runs without ctx.elastic_state: stop asking.
            # (A trial that has not reported yet may just not be in its loop yet.)
            tr.resizable = not (refused and tr.last_step >= 0)
            if n < before and refused:
                # The user code cannot shrink in place (no ctx.elastic_state): take the
                # slots back the slow way, through a checkpoint.
                self.preempt(tr)
        self._on_change()

    def _spawn(self: ExperimentRun, coro: Awaitable[None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def worker_shape(self: ExperimentRun) -> Shape:
        """What one worker of this experiment's trials is (resources, runtime_env)."""
        from resolute.elastic.placement import Shape

        return Shape.for_spec(
            self._spec(TrialRun(searcher_id=0, trial_id=0, hparams={}, seed=0, until=0))
        )

    def _spec(self: ExperimentRun, tr: TrialRun) -> TrialSpec:
        cfg = self.config
        return TrialSpec(
            experiment_id=self.id,
            experiment_name=cfg.name,
            trial_id=tr.trial_id,
            searcher_trial_id=tr.searcher_id,
            hparams=tr.hparams,
            seed=tr.seed,
            entrypoint=cfg.entrypoint,
            # Uploaded: the workers import from the package Ray unpacked as their cwd.
            context_dir="" if cfg.environment.package else str(cfg.context_dir),
            storage_root=self.storage.root,
            metric=cfg.searcher.metric,
            time_metric=cfg.searcher.time_metric,
            until=tr.until,
            restore_from=tr.latest_checkpoint,
            checkpoint_period=cfg.checkpoint.period,
            backend=cfg.resources.backend,
            gpus_per_slot=cfg.resources.gpus_per_slot,
            cpus_per_slot=cfg.resources.cpus_per_slot,
            env_vars=dict(cfg.environment.env_vars),
            reuse_workers=cfg.resources.reuse_workers,
            attempt=tr.restarts,
            runtime_env=cfg.trial_runtime_env(),
            gpu_stats_interval_s=cfg.tracking.gpu_stats_interval_s
            if cfg.resources.gpus_per_slot
            else 0.0,
        )

    async def _run_trial(self: ExperimentRun, tr: TrialRun, n: int) -> None:
        spec = self._spec(tr)
        try:
            group = await self._start_group(spec, n, self.config.resources.slots_per_trial.max)
        except ResourcesUnavailable as exc:
            # Our count promised the slots but Ray could not place them (a node went away,
            # another tenant took them): back to the queue, nothing lost.
            log.warning("trial %s: %s; queued again", tr.trial_id, exc)
            self._account()
            tr.slots = 0
            self._enqueue(tr)
            await asyncio.sleep(1.0)
            self._on_change()
            return
        except EntrypointError as exc:
            # Every trial would fail the same way: end the experiment now, with the reason.
            self._account()
            tr.slots = 0
            async with self._lock:
                self._end_trial(tr, TrialStatus.ERRORED, error=str(exc))
                self.fail(str(exc))
            return
        except Exception as exc:
            log.exception("trial %s: worker group failed to start", tr.trial_id)
            outcome: Any = FailedOutcome(error=f"{type(exc).__name__}: {exc}")
        else:
            tr.group, tr.started_once = group, True
            self._set_status(tr, TrialStatus.RUNNING)
            # Decisions that arrived while the group was starting.
            if tr.request is not None:
                group.request_stop(pause=tr.request != "stop" and tr.request != "kill")
            elif tr.until != spec.until:
                group.set_target(tr.until)
            try:
                outcome = await group.wait()
            except Exception as exc:
                log.exception("trial %s: worker group failed", tr.trial_id)
                outcome = FailedOutcome(error=f"{type(exc).__name__}: {exc}")
            finally:
                tr.group = None
                try:
                    await group.shutdown()
                except Exception:
                    log.exception("trial %s: shutting down its worker group", tr.trial_id)
        self._account()
        tr.slots = 0
        if getattr(outcome, "checkpoint_uri", None):
            tr.latest_checkpoint = outcome.checkpoint_uri
        async with self._lock:
            await self._on_outcome(tr, outcome)

    async def _on_outcome(self: ExperimentRun, tr: TrialRun, outcome: Any) -> None:
        errored = getattr(outcome, "status", "errored") == "errored"
        request, tr.request = tr.request, None
        events: list[Event] = []
        if request == "kill":
            self._end_trial(tr, TrialStatus.KILLED)
            events.append(ExitEvent(tr.searcher_id, ExitReason.KILLED))
        elif request == "stop" and not errored:
            done = tr.stop_reason == StopReason.FINISHED
            self._end_trial(tr, TrialStatus.COMPLETED if done else TrialStatus.STOPPED)
        elif request is not None and not errored:  # pause, yield, preempt
            self._set_status(tr, TrialStatus.PAUSED)
            tr.waiting = False
            if request == "preempt" or tr.resume_pending:
                tr.resume_pending = False
                self._enqueue(tr)
        elif errored:
            events += self._on_error(tr, outcome, request)
        else:  # the user's function returned on its own
            self._end_trial(tr, TrialStatus.COMPLETED)
            events.append(ExitEvent(tr.searcher_id, ExitReason.COMPLETED))
        await self._feed(events)

    def _on_error(
        self: ExperimentRun, tr: TrialRun, outcome: Any, request: str | None
    ) -> list[Event]:
        error = (getattr(outcome, "error", None) or "unknown error")[:2000]
        counts = getattr(outcome, "counts_as_restart", True)
        if self.status != ExperimentStatus.ACTIVE or (
            counts and tr.restarts >= self.config.max_restarts
        ):
            self._end_trial(tr, TrialStatus.ERRORED, error=error)
            return [ExitEvent(tr.searcher_id, ExitReason.ERRORED)] if request is None else []
        # Lost workers or nodes do not use up max_restarts; a user exception does.
        if counts:
            tr.restarts += 1
        self.journal.update_trial(tr.trial_id, restarts=tr.restarts, error=error)
        log.warning(
            "trial %s failed (%s); restart %d of %d (%s) from %s",
            tr.trial_id,
            error.splitlines()[-1] if error else "",
            tr.restarts,
            self.config.max_restarts,
            "counted" if counts else "workers lost, not counted",
            tr.latest_checkpoint or "scratch",
        )
        if request == "stop":
            self._end_trial(tr, TrialStatus.STOPPED)
        else:
            self._set_status(tr, TrialStatus.PAUSED)
            if request != "pause":  # back to the queue: RUNNING again from its checkpoint
                self._enqueue(tr)
        return []
