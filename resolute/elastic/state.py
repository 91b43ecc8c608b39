"""In-memory elastic training state (Horovod-elastic spirit, for torch DDP and Horovod).

::

    def train(ctx):
        model = Net()
        opt = torch.optim.SGD(model.parameters(), lr=ctx.hparams["lr"])
        state = ctx.elastic_state(model=model, optimizer=opt, step=0, epoch=0)

        def loop(state):
            ddp = ctx.prepare_model(state.model)     # rebuilt for every new world
            while state.step < 1000:
                loss = train_one_step(ddp, opt)
                metrics = ctx.all_reduce_mean({"loss": loss})   # collectives before commit
                state.step += 1
                state.commit()                        # the group may re-form here
                ctx.report(state.step, metrics)
                if ctx.should_stop():
                    state.save_checkpoint()
                    return

        state.run(loop)

``state.commit()`` keeps an in-memory copy of the model, the optimizer, ``step`` and the
extra fields, in CPU buffers reused from one commit to the next (on a GPU: pinned, filled
asynchronously; see ``resolute.elastic.snapshot``). When the group's membership changes (``resize``, or a rank dies and a
collective fails), every surviving rank leaves ``loop`` (the failing collective raises
within milliseconds; a planned resize interrupts at the start of the next ``commit``),
restores its last commit, joins the new process group, and the rank with the newest
commit broadcasts its state to everyone, newcomers included; then ``loop`` is called again.
The ranks learn of a planned re-formation at a commit that checks (one small collective):
not every commit checks, but checks are at most ~0.1 s of training apart.
So ``loop`` must be re-entrant: build everything that depends on the world (the DDP
wrapper, loaders, samplers) inside it, and resume from ``state.step``. Work since the last
commit is redone; committed steps never are. Report right after ``commit``, with no
collective in between (as above: reduce the metrics before committing), and every
reported step reaches the control plane: if the chief dies with reports still unsent, the
next chief replays its own copies of them (so report the same values on every rank; the
control plane drops a replay of a step it already has).

A durable checkpoint is written every ``checkpoint_period`` steps (the experiment's
setting) at commit time, through ``ctx.save_checkpoint``. When the run starts from a
checkpoint written by ``save_checkpoint``, ``run`` restores it before the first call.
Locally (``TrialContext.local``) ``run`` simply calls ``loop`` once.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from resolute.elastic.control import CheckSchedule, Reform
from resolute.elastic.snapshot import SnapshotCopier, clone_tensors

if TYPE_CHECKING:
    from resolute.context import TrialContext

ELASTIC_MARK = "__resolute_elastic_state__"
_INTERNAL = {
    "_ctx",
    "model",
    "optimizer",
    "_fields",
    "_saved",
    "_commits",
    "_last_durable",
    "_checks",
    "_copier",
}


def _cpu_copy(obj: Any) -> Any:
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _cpu_copy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cpu_copy(v) for v in obj)
    return obj


def _unwrap(model: Any) -> Any:
    # Users may pass the DDP wrapper; the state belongs to the module inside it.
    inner = getattr(model, "module", None)
    return inner if inner is not None and type(model).__name__.endswith("DataParallel") else model


class ElasticState:
    _saved: dict[str, Any] | None

    def __init__(
        self,
        *,
        ctx: TrialContext,
        model: Any = None,
        optimizer: Any = None,
        step: int = 0,
        extra: dict[str, Any] | None = None,
    ) -> None:
        object.__setattr__(self, "_ctx", ctx)
        object.__setattr__(self, "model", _unwrap(model) if model is not None else None)
        object.__setattr__(self, "optimizer", optimizer)
        object.__setattr__(self, "_fields", {"step": int(step), **(extra or {})})
        object.__setattr__(self, "_saved", None)
        object.__setattr__(self, "_commits", 0)
        object.__setattr__(self, "_last_durable", int(step))
        object.__setattr__(self, "_checks", CheckSchedule())
        object.__setattr__(self, "_copier", SnapshotCopier())

    # ``state.step``, ``state.epoch``, ... read and write the plain fields.
    def __getattr__(self, name: str) -> Any:
        fields = object.__getattribute__(self, "_fields")
        if name in fields:
            return fields[name]
        raise AttributeError(f"elastic state has no field {name!r}; pass it to elastic_state()")

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _INTERNAL:
            object.__setattr__(self, name, value)
        else:
            self._fields[name] = value

    @property
    def commits(self) -> int:
        return int(self._commits)

    # -- snapshots ----------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """A CPU copy of everything: model, optimizer, fields (and a mark that tells ``run``
        this dict came from an elastic state)."""
        return {
            ELASTIC_MARK: True,
            "model": _cpu_copy(self.model.state_dict()) if self.model is not None else None,
            "optimizer": _cpu_copy(self.optimizer.state_dict())
            if self.optimizer is not None
            else None,
            "fields": _cpu_copy(dict(self._fields)),
            "commits": self._commits,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # The optimizer and the fields keep the tensors they are given (torch's optimizer
        # does not copy tensors already on the right device): give them their own, so that
        # training never writes into ``state`` (a commit's buffers, reused by the next one).
        if self.model is not None and state.get("model") is not None:
            self.model.load_state_dict(state["model"])
        if self.optimizer is not None and state.get("optimizer") is not None:
            self.optimizer.load_state_dict(clone_tensors(state["optimizer"]))
        self._fields = dict(clone_tensors(state["fields"]))
        self._commits = int(state.get("commits", 0))

    def _snapshot(self, previous: dict[str, Any] | None) -> dict[str, Any]:
        """As ``state_dict()``, but into ``previous``'s buffers where they fit."""
        old = previous or {}
        copier = self._copier
        copier.begin()
        model = None
        if self.model is not None:
            model = copier.copy(old.get("model"), self.model.state_dict())
        optimizer = None
        if self.optimizer is not None:
            optimizer = copier.copy(old.get("optimizer"), self.optimizer.state_dict())
        fields = copier.copy(old.get("fields"), dict(self._fields))
        copier.end()
        return {
            ELASTIC_MARK: True,
            "model": model,
            "optimizer": optimizer,
            "fields": fields,
            "commits": self._commits,
        }

    def _settled(self) -> dict[str, Any] | None:
        """The last commit, once its copies (asynchronous on a GPU) have landed."""
        self._copier.wait()
        return self._saved

    def _settled_on_host(self) -> dict[str, Any] | None:
        """The last commit in host memory: what goes to disk or to other ranks (a snapshot
        kept on the GPU is copied out here, which only a checkpoint or a re-form pays)."""
        saved = self._settled()
        if saved is not None and self._copier.on_device:
            return dict(_cpu_copy(saved))
        return saved

    def commit(self) -> None:
        """Keep the current state as the point to roll back to. At a check (one small
        collective, at most ~0.1 s of training apart) it first asks whether the group is
        about to re-form; if so, every rank leaves the loop here, at the same step, before
        this step's commit."""
        membership = self._ctx.membership
        if membership is not None:
            world = self._ctx.distributed.world
            if world.world_size == 1 or self._checks.due(world.generation):
                self._check_membership(membership, lead=world.rank == 0)
        self._commits += 1
        self._saved = self._snapshot(self._saved)
        if membership is not None:
            membership.on_commit(commits=self._commits, step=int(self._fields["step"]))
        period = self._ctx.checkpoint_period
        if period and int(self._fields["step"]) - self._last_durable >= period:
            self.save_checkpoint()

    def _check_membership(self, membership: Any, *, lead: bool) -> None:
        signal = [
            int(membership.pending_generation() > membership.generation),
            membership.delivered_step(),
            self._checks.propose_gap() if lead else 0,
        ]
        pending, delivered, gap = self._ctx.distributed.broadcast_ints(signal)
        self._checks.agreed(gap)
        membership.prune_replays(delivered)
        if pending:
            raise Reform(planned=True)

    def restore(self) -> None:
        """Roll back to the last commit (a no-op before the first)."""
        saved = self._settled()
        if saved is not None:
            self.load_state_dict(saved)

    def sync(self) -> None:
        """Everyone takes rank 0's last commit (a collective)."""
        payload = self._settled_on_host() if self._ctx.rank == 0 else None
        payload = self._ctx.distributed.broadcast_object(payload, src=0)
        if self._ctx.rank != 0 and payload is not None:
            self.load_state_dict(payload)
            self._saved = payload

    def save_checkpoint(self) -> str | None:
        """Write the last commit durably (chief only; see ``TrialContext.save_checkpoint``)."""
        self._last_durable = int(self._fields["step"])
        saved = self._settled_on_host()
        uri: str | None = self._ctx.save_checkpoint(
            saved if saved is not None else self.state_dict()
        )
        return uri

    # -- the elastic loop ---------------------------------------------------------------

    def run(self, fn: Callable[[ElasticState], Any]) -> Any:
        """Call ``fn(self)`` and, whenever the group re-forms, restore the last commit and
        call it again in the new world; returns what ``fn`` finally returns."""
        from resolute.elastic.backends.base import is_collective_failure

        ckpt = self._ctx.load_checkpoint()
        if isinstance(ckpt, dict) and ckpt.get(ELASTIC_MARK):
            self.load_state_dict(ckpt)
            self._last_durable = int(self._fields["step"])
        self._saved = self.state_dict()
        membership = self._ctx.membership
        if membership is None:
            return fn(self)
        membership.mark_elastic()
        while True:
            try:
                self.sync()
                membership.replay_after_reform(up_to_step=int(self._fields["step"]))
                return fn(self)
            except Reform as reform:
                cause: BaseException = reform
                planned = reform.planned
            except Exception as exc:
                if not is_collective_failure(exc):
                    raise
                cause, planned = exc, False
            # The failed loop's frames still hold the DDP wrapper, and through it the old
            # process group; gloo closes its sockets only when that object is freed, and
            # peers blocked on this rank wake up only when the sockets close.
            traceback.clear_frames(cause.__traceback__)
            membership.leave_and_rejoin(cause, planned=planned)
            self.restore()
