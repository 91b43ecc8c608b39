"""ElasticState commits: copies into reused buffers, never aliased with live training state.

Runs on CPU here; the same checks run on a GPU when one is present, with the snapshot kept
on the GPU ("cuda", the default where it fits) and in pinned host memory ("cuda:host")."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch

from resolute.context import TrialContext
from resolute.elastic.snapshot import SNAPSHOT_ENV, SnapshotCopier
from resolute.elastic.state import ElasticState

DEVICES = ["cpu"] + (["cuda", "cuda:host"] if torch.cuda.is_available() else [])


@pytest.fixture(autouse=True)
def _snapshot_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SNAPSHOT_ENV, raising=False)


def make(
    tmp_path: Path, device: str, opt: str = "sgd"
) -> tuple[ElasticState, torch.nn.Module, torch.optim.Optimizer]:
    if device == "cuda:host":
        os.environ[SNAPSHOT_ENV] = "host"  # the fixture above removes it after the test
    device = device.split(":")[0]
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(6, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 2)
    ).to(device)
    optimizer: torch.optim.Optimizer
    if opt == "sgd":
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    ctx = TrialContext.local({}, checkpoint_dir=tmp_path / "ckpt")
    state = ctx.elastic_state(model=model, optimizer=optimizer, step=0, scale=torch.ones(3))
    return state, model, optimizer


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int) -> None:
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(step)
    x = torch.randn(16, 6, generator=gen).to(device)
    y = torch.randn(16, 2, generator=gen).to(device)
    loss = torch.nn.functional.mse_loss(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def snapshot_of(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    return {
        "model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "optimizer": {
            i: {k: v.detach().cpu().clone() for k, v in s.items() if isinstance(v, torch.Tensor)}
            for i, s in enumerate(optimizer.state.values())
        },
    }


def assert_same(a: dict[str, Any], b: dict[str, Any]) -> None:
    for part in ("model", "optimizer"):
        assert a[part].keys() == b[part].keys()
        for key in a[part]:
            left, right = a[part][key], b[part][key]
            if isinstance(left, dict):
                for k in left:
                    torch.testing.assert_close(left[k], right[k], rtol=0, atol=0)
            else:
                torch.testing.assert_close(left, right, rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_restore_returns_to_the_last_commit_however_far_training_went(
    tmp_path: Path, device: str, opt: str
) -> None:
    state, model, optimizer = make(tmp_path, device, opt)
    state.commit()  # before the first step: no optimizer state yet
    for step in range(3):
        train_step(model, optimizer, step)
        state.step += 1
        state.commit()
    at_commit = snapshot_of(model, optimizer)
    for step in range(3, 6):
        train_step(model, optimizer, step)
    state.restore()
    assert state.step == 3
    assert_same(snapshot_of(model, optimizer), at_commit)


@pytest.mark.parametrize("device", DEVICES)
def test_commits_reuse_their_buffers(tmp_path: Path, device: str) -> None:
    state, model, optimizer = make(tmp_path, device)
    train_step(model, optimizer, 0)
    state.commit()
    first = state._settled()
    assert first is not None
    ptrs = {k: v.data_ptr() for k, v in first["model"].items()}
    momentum = [s["momentum_buffer"].data_ptr() for s in first["optimizer"]["state"].values()]
    train_step(model, optimizer, 1)
    state.commit()
    second = state._settled()
    assert second is not None
    assert {k: v.data_ptr() for k, v in second["model"].items()} == ptrs
    assert [s["momentum_buffer"].data_ptr() for s in second["optimizer"]["state"].values()] == (
        momentum
    )
    # Where the snapshot lives: host memory for CPU training or when asked; the GPU otherwise.
    expected = "cuda" if device == "cuda" else "cpu"
    assert all(v.device.type == expected for v in second["model"].values())
    if device == "cuda:host":
        assert all(v.is_pinned() for v in second["model"].values())


def test_a_bad_snapshot_mode_is_refused_with_the_choices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SNAPSHOT_ENV, "gpu")
    with pytest.raises(ValueError, match="auto, device, host"):
        SnapshotCopier()
    monkeypatch.setenv(SNAPSHOT_ENV, "HOST")
    assert SnapshotCopier().mode == "host"


@pytest.mark.parametrize("device", DEVICES)
def test_training_after_a_restore_never_writes_into_the_commit(tmp_path: Path, device: str) -> None:
    # torch's optimizer keeps the tensors it is loaded with: if the restore handed it the
    # commit's own buffers, the next steps would silently change the commit.
    state, model, optimizer = make(tmp_path, device)
    for step in range(2):
        train_step(model, optimizer, step)
        state.commit()
    at_commit = snapshot_of(model, optimizer)
    train_step(model, optimizer, 2)
    state.restore()
    for step in range(2, 5):
        train_step(model, optimizer, step)
    state.restore()
    assert_same(snapshot_of(model, optimizer), at_commit)
    state.scale.mul_(5)  # a tensor field, changed in place after the restore
    state.restore()
    torch.testing.assert_close(state.scale, torch.ones(3))


@pytest.mark.parametrize("device", DEVICES)
def test_a_run_with_a_rollback_matches_one_without(tmp_path: Path, device: str) -> None:
    # Committing every step, losing two uncommitted steps and redoing them gives the same
    # parameters as never losing them.
    state, model, optimizer = make(tmp_path / "a", device)
    for step in range(6):
        train_step(model, optimizer, step)
        state.step += 1
        state.commit()
        if step == 3:
            train_step(model, optimizer, 100)  # work that is lost
            train_step(model, optimizer, 101)
            state.restore()
    reference, ref_model, ref_opt = make(tmp_path / "b", device)
    for step in range(6):
        train_step(ref_model, ref_opt, step)
    assert_same(snapshot_of(model, optimizer), snapshot_of(ref_model, ref_opt))


@pytest.mark.parametrize("device", DEVICES)
def test_a_checkpoint_holds_the_commit(tmp_path: Path, device: str) -> None:
    state, model, optimizer = make(tmp_path, device)
    train_step(model, optimizer, 0)
    state.step = 1
    state.commit()
    at_commit = snapshot_of(model, optimizer)
    train_step(model, optimizer, 1)  # queued right behind the commit's copies on a GPU
    uri = state.save_checkpoint()
    assert uri is not None
    saved = torch.load(Path(uri) / "resolute-state.pt", weights_only=False)
    assert saved["fields"]["step"] == 1
    for key, value in at_commit["model"].items():
        torch.testing.assert_close(saved["model"][key], value, rtol=0, atol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("with_optimizer", [True, False])
@pytest.mark.parametrize("mode", ["host", "device"])
def test_gpu_work_queued_behind_a_commit_waits_for_its_copies(
    tmp_path: Path, with_optimizer: bool, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Large enough that the copies are still running when the next step is queued: the
    # step must not change the parameters under them.
    monkeypatch.setenv(SNAPSHOT_ENV, mode)
    torch.manual_seed(0)
    model = torch.nn.Linear(4096, 4096).cuda()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    ctx = TrialContext.local({}, checkpoint_dir=tmp_path / "ckpt")
    state = ctx.elastic_state(model=model, optimizer=optimizer if with_optimizer else None)
    x = torch.randn(256, 4096, device="cuda")
    for _ in range(3):
        model(x).square().mean().backward()
        optimizer.step()
        state.commit()
        expected = model.weight.detach().clone()  # queued after the commit's copies
        if with_optimizer:
            for _ in range(5):
                model(x).square().mean().backward()
                optimizer.step()
        else:
            with torch.no_grad():
                model.weight.mul_(1.5)
        saved = state._settled()
        assert saved is not None
        weight = saved["model"]["weight"]
        torch.testing.assert_close(weight.cpu(), expected.cpu(), rtol=0, atol=0)
        assert weight.is_cuda if mode == "device" else weight.is_pinned()
