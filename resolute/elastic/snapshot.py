"""Copies of training state into buffers reused from one commit to the next.

An elastic commit happens every step: allocating fresh tensors for it each time (as
``tensor.to("cpu", copy=True)`` does) costs far more than the copy itself, since every large
allocation is new memory the kernel must map. ``SnapshotCopier.copy`` walks a state dict
(nested dicts, lists, tuples) and copies each tensor into the tensor at the same place in the
previous snapshot when shape and dtype still match, allocating only when they do not (the
first commit, or optimizer state created lazily by the first ``step``). Everything that is
not a tensor is kept by reference in new containers, so a snapshot's containers are its own.

On a GPU the buffers are pinned and the copies asynchronous, on the current stream: the
host goes on at once, and any later GPU work, an in-place change of a parameter included,
runs after the copy. ``wait()`` blocks until the last snapshot has landed in host memory:
call it before reading one.

The copies are made when ``commit`` is called, not deferred to the next ``optimizer.step``:
user code may change parameters in place between the two (a manual edit, a re-initialised
layer), and the commit must hold the values as they were.
"""

from __future__ import annotations

from typing import Any

import torch


def clone_tensors(obj: Any) -> Any:
    """``obj`` with every tensor replaced by a copy on the same device."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, dict):
        return {k: clone_tensors(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(clone_tensors(v) for v in obj)
    return obj


def _reusable(previous: Any, src: torch.Tensor) -> bool:
    return (
        isinstance(previous, torch.Tensor)
        and previous.device.type == "cpu"
        and previous.layout == torch.strided
        and previous.shape == src.shape
        and previous.dtype == src.dtype
        and previous.is_contiguous()
        and (previous.is_pinned() or not src.is_cuda)
    )


class SnapshotCopier:
    """Copies state dicts into reused CPU buffers; one per ``ElasticState``."""

    def __init__(self) -> None:
        self._done: torch.cuda.Event | None = None
        self._on_gpu = False  # this snapshot queued copies on a GPU
        self._gpu_in_flight = False  # the last snapshot's GPU copies may not have landed
        self._cpu_dst: list[torch.Tensor] = []
        self._cpu_src: list[torch.Tensor] = []

    def begin(self) -> None:
        self._on_gpu = False
        self._cpu_dst, self._cpu_src = [], []

    def copy(self, previous: Any, obj: Any) -> Any:
        """``obj`` copied, reusing ``previous``'s tensors where they fit."""
        if isinstance(obj, torch.Tensor):
            return self._copy_tensor(previous, obj)
        if isinstance(obj, dict):
            old = previous if isinstance(previous, dict) else {}
            return {k: self.copy(old.get(k), v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            olds = (
                list(previous)
                if isinstance(previous, (list, tuple)) and len(previous) == len(obj)
                else [None] * len(obj)
            )
            return type(obj)(self.copy(o, v) for o, v in zip(olds, obj, strict=True))
        return obj

    def end(self) -> None:
        """Finish the snapshot: the CPU copies happen here, in one batched call."""
        if self._cpu_dst:
            torch._foreach_copy_(self._cpu_dst, self._cpu_src)
            self._cpu_dst, self._cpu_src = [], []
        if self._on_gpu:
            if self._done is None:
                self._done = torch.cuda.Event()  # type: ignore[no-untyped-call]
            self._done.record(torch.cuda.current_stream())
            self._gpu_in_flight = True

    def wait(self) -> None:
        """Block until the last snapshot is complete in host memory."""
        if self._gpu_in_flight and self._done is not None:
            self._done.synchronize()
        self._gpu_in_flight = False

    def _copy_tensor(self, previous: Any, src: torch.Tensor) -> torch.Tensor:
        src = src.detach()
        if src.layout != torch.strided or src.is_quantized:
            return src.to("cpu", copy=True)  # rare kinds: a plain, synchronous copy
        dst = (
            previous
            if _reusable(previous, src)
            else torch.empty(src.shape, dtype=src.dtype, pin_memory=src.is_cuda)
        )
        if src.is_cuda:
            self._on_gpu = True
            # Ordered on the current stream: after the step that produced ``src``, before
            # any later change of it; a reused buffer was read by the host only after wait().
            dst.copy_(src, non_blocking=True)
        else:
            self._cpu_dst.append(dst)
            self._cpu_src.append(src)
        return dst
