"""Copies of training state into buffers reused from one commit to the next.

An elastic commit happens every step: allocating fresh tensors for it each time (as
``tensor.to("cpu", copy=True)`` does) costs far more than the copy itself, since every large
allocation is new memory the kernel must map. ``SnapshotCopier.copy`` walks a state dict
(nested dicts, lists, tuples) and copies each tensor into the tensor at the same place in the
previous snapshot when shape and dtype still match, allocating only when they do not (the
first commit, or optimizer state created lazily by the first ``step``). Everything that is
not a tensor is kept by reference in new containers, so a snapshot's containers are its own.

On a GPU the destination buffers are pinned and the copies asynchronous: the model's
buffers (running statistics, which the next forward pass updates) are copied on the current
stream, parameters and optimizer state on a side stream; the next ``optimizer.step()`` waits
for that stream (on the GPU, not the CPU) before it changes them. ``wait()`` blocks until
the last snapshot has landed in host memory: call it before reading one.
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
    """Copies tensors into reused CPU buffers; one per ``ElasticState``."""

    def __init__(self) -> None:
        self._side: torch.cuda.Stream | None = None
        self._done: torch.cuda.Event | None = None
        self._stream: Any = None  # the stream a tensor copy goes on (None: synchronous)
        self._on_gpu = False  # the snapshot being taken has asynchronous copies
        self._in_flight = False  # the last snapshot's copies may not have landed yet
        self._hooked: Any = None  # the optimizer whose step waits for the side stream
        self._hook: Any = None

    # -- one snapshot -----------------------------------------------------------------------

    def begin(self, optimizer: Any) -> None:
        self._on_gpu = False
        self._stream = None
        self._ensure_hook(optimizer)

    def copy_module_state(self, previous: Any, module: Any) -> dict[str, Any]:
        """``module.state_dict()`` copied: parameters like optimizer state, buffers on the
        current stream (the next forward pass may update them in place)."""
        state = module.state_dict()
        if not any(isinstance(t, torch.Tensor) and t.is_cuda for t in state.values()):
            return self.copy(previous, state)  # type: ignore[no-any-return]
        params = {n for n, _ in module.named_parameters(remove_duplicate=False)}
        old = previous if isinstance(previous, dict) else {}
        out: dict[str, Any] = {}
        for name, value in state.items():
            if name in params:
                out[name] = self.copy(old.get(name), value)
            else:
                side, self._stream = self._stream, None
                try:
                    out[name] = self._copy_buffer(old.get(name), value, current=True)
                finally:
                    self._stream = side
        return out

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
        if not self._on_gpu:
            return
        side = self._side_stream()
        # The buffers' copies went on the current stream: the event covers them too.
        side.wait_stream(torch.cuda.current_stream())
        if self._done is None:
            self._done = torch.cuda.Event()
        self._done.record(side)
        self._in_flight = True
        if self._hooked is None:
            # No optimizer step to wait in: training must not get ahead of the copy.
            torch.cuda.current_stream().wait_event(self._done)

    def wait(self) -> None:
        """Block until the last snapshot is in host memory."""
        if self._in_flight and self._done is not None:
            self._done.synchronize()
        self._in_flight = False

    # -- tensors ----------------------------------------------------------------------------

    def _copy_tensor(self, previous: Any, src: torch.Tensor) -> torch.Tensor:
        return self._copy_buffer(previous, src, current=False)

    def _copy_buffer(self, previous: Any, src: torch.Tensor, *, current: bool) -> torch.Tensor:
        src = src.detach()
        if src.layout != torch.strided or src.is_quantized:
            return src.to("cpu", copy=True)  # rare kinds: a plain, synchronous copy
        dst = (
            previous
            if _reusable(previous, src)
            else torch.empty(src.shape, dtype=src.dtype, pin_memory=src.is_cuda)
        )
        if not src.is_cuda:
            dst.copy_(src)
            return dst
        if current:
            dst.copy_(src, non_blocking=True)
        else:
            side = self._start_side(src.device)
            with torch.cuda.stream(side):
                dst.copy_(src, non_blocking=True)
            # The caching allocator must not hand ``src``'s memory to another stream while
            # the side stream still reads it (an optimizer may replace its state tensors).
            src.record_stream(side)
        self._on_gpu = True
        return dst

    def _side_stream(self) -> torch.cuda.Stream:
        if self._side is None:
            self._side = torch.cuda.Stream()
        return self._side

    def _start_side(self, device: torch.device) -> torch.cuda.Stream:
        side = self._side_stream()
        if self._stream is None:
            # Everything queued so far on the current stream (the step that produced this
            # state, the buffer copies) comes before the side stream's copies.
            self._stream = side
            side.wait_stream(torch.cuda.current_stream(device))
        return side

    def _ensure_hook(self, optimizer: Any) -> None:
        if optimizer is self._hooked or optimizer is None:
            return
        register = getattr(optimizer, "register_step_pre_hook", None)
        if register is None:
            return
        if self._hook is not None:
            self._hook.remove()
        self._hook = register(self._before_step)
        self._hooked = optimizer

    def _before_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        # The step changes parameters and state in place: on the GPU, after the copies.
        if self._in_flight and self._done is not None:
            torch.cuda.current_stream().wait_event(self._done)
