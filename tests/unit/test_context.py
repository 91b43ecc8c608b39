"""The local TrialContext: user code runs as a plain script with the same API."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from resolute.context import TrialContext, WorkerCache, local_context


def _ctx(tmp_path: Path, **kwargs: object) -> TrialContext:
    return TrialContext.local(
        {"lr": 0.1}, checkpoint_dir=tmp_path / "ckpt", log_file=tmp_path / "trial.log", **kwargs
    )


def test_local_context_is_a_single_chief_process(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path, seed=3)
    assert (ctx.rank, ctx.world_size, ctx.local_rank, ctx.is_chief) == (0, 1, 0, True)
    assert ctx.hparams == {"lr": 0.1}
    assert ctx.seed == 3
    assert ctx.device == torch.device("cpu")


def test_seed_is_applied_to_torch(tmp_path: Path) -> None:
    _ctx(tmp_path, seed=11)
    first = torch.rand(3)
    _ctx(tmp_path, seed=11)
    assert torch.equal(first, torch.rand(3))


def test_reports_are_kept_and_logged(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path, trial_id=41)
    ctx.report(1, {"loss": 0.5})
    ctx.report(2, {"loss": 0.25})
    assert [(r.kind, r.step, r.metrics["loss"]) for r in ctx.local_reports] == [
        ("metrics", 1, 0.5),
        ("metrics", 2, 0.25),
    ]
    assert "step 2: {'loss': 0.25}" in (tmp_path / "trial.log").read_text()


def test_should_stop_turns_true_after_request_stop(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    assert ctx.should_stop() is False
    ctx.request_stop(pause=True)
    assert ctx.should_stop() is True


def test_fresh_run_has_no_checkpoint_and_a_saved_dict_comes_back(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    assert ctx.load_checkpoint() is None
    ctx.report(5, {"loss": 1.0})
    uri = ctx.save_checkpoint({"step": 5, "w": torch.arange(3)})
    assert uri is not None and Path(uri).is_dir()
    loaded = ctx.load_checkpoint()
    assert isinstance(loaded, dict)
    assert loaded["step"] == 5 and torch.equal(loaded["w"], torch.arange(3))
    (kind, step, ck) = [(r.kind, r.step, r.checkpoint_uri) for r in ctx.local_reports][-1]
    assert (kind, step, ck) == ("checkpoint", 5, uri)


def test_a_checkpoint_saved_before_its_report_carries_the_step_given(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    ctx.report(7, {"loss": 1.0})
    uri = ctx.save_checkpoint({"epoch": 8}, step=8)  # saved before step 8 is reported
    last = ctx.local_reports[-1]
    assert (last.kind, last.step, last.checkpoint_uri) == ("checkpoint", 8, uri)


def test_a_saved_directory_comes_back_as_a_directory_and_restore_from_is_honoured(
    tmp_path: Path,
) -> None:
    src = tmp_path / "mine"
    src.mkdir()
    (src / "weights.bin").write_bytes(b"\x00\x01")
    first = _ctx(tmp_path)
    uri = first.save_checkpoint(src)
    assert uri is not None
    resumed = TrialContext.local(checkpoint_dir=tmp_path / "other", restore_from=uri)
    path = resumed.load_checkpoint()
    assert isinstance(path, Path)
    assert (path / "weights.bin").read_bytes() == b"\x00\x01"


def test_worker_cache_creates_once() -> None:
    cache = WorkerCache()
    calls = []
    assert cache.get_or_create("d", lambda: calls.append(1) or [1, 2]) == [1, 2]
    assert cache.get_or_create("d", lambda: calls.append(1) or [3]) == [1, 2]
    assert calls == [1]
    assert (cache.hits, cache.misses, len(cache), "d" in cache) == (1, 1, 1, True)


def test_prepare_loader_shuffles_reproducibly_by_seed(tmp_path: Path) -> None:
    data = torch.utils.data.TensorDataset(torch.arange(20.0))
    orders = []
    for _ in range(2):
        ctx = _ctx(tmp_path, seed=5)
        loader = ctx.prepare_loader(data, batch_size=4)
        orders.append(torch.cat([b[0] for b in loader]).tolist())
    assert orders[0] == orders[1]
    assert sorted(orders[0]) == list(range(20))
    assert orders[0] != list(range(20))


def test_elastic_state_commits_restores_and_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    state = ctx.elastic_state(model=model, optimizer=opt, step=0, epoch=0)

    def loop(state):  # type: ignore[no-untyped-def]
        while state.step < 3:
            state.step += 1
            state.commit()
        committed = model.weight.detach().clone()
        with torch.no_grad():
            model.weight.add_(1.0)
        state.step = 99
        state.restore()
        assert state.step == 3
        assert torch.equal(model.weight, committed)
        state.epoch = 1
        state.commit()
        return state.save_checkpoint()

    uri = state.run(loop)
    assert state.commits == 4

    resumed_ctx = TrialContext.local(checkpoint_dir=tmp_path / "r", restore_from=uri)
    fresh = torch.nn.Linear(2, 1)
    again = resumed_ctx.elastic_state(model=fresh, optimizer=None, step=0, epoch=0)
    assert again.run(lambda s: (s.step, s.epoch)) == (3, 1)
    assert torch.equal(fresh.weight, model.weight)


def test_elastic_state_rejects_unknown_fields(tmp_path: Path) -> None:
    state = _ctx(tmp_path).elastic_state(step=0)
    with pytest.raises(AttributeError, match="pass it to elastic_state"):
        _ = state.epoch


def test_local_context_alias(tmp_path: Path) -> None:
    ctx = local_context({"a": 1}, checkpoint_dir=tmp_path)
    assert ctx.hparams == {"a": 1}
