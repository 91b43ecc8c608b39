"""Copies of training state into buffers reused from one commit to the next.

An elastic commit happens every step: allocating fresh tensors for it each time (as
``tensor.to("cpu", copy=True)`` does) costs far more than the copy itself, since every large
allocation is new memory the kernel must map. ``SnapshotCopier.copy`` walks a state dict
(nested dicts, lists, tuples) and copies each tensor into the tensor at the same place in the
previous snapshot when shape and dtype still match, allocating only when they do not (the
first commit, or optimizer state created lazily by the first ``step``). Everything that is
not a tensor is kept by reference in new containers, so a snapshot's containers are its own.

The copy of parameters and optimizer state is deferred when an optimizer is known: only its
next ``step()`` changes them, and a hook makes that step wait for the copy. The model's
buffers (running statistics, which the next forward pass updates) and the extra fields are
copied at once.

- On a GPU the buffers are pinned and the deferred copies go on a side stream; the step
  waits for that stream on the GPU, not on the CPU.
- On a CPU a low-priority background thread copies while the rank waits in its gradient
  all-reduce, which leaves the core idle; whatever is left when the step comes, the step's
  thread copies itself. So the copy costs at most what a copy in ``commit`` would.

``wait()`` blocks until the last snapshot is complete: call it before reading one.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from typing import Any

import torch

CHUNK_ELEMENTS = 1 << 16  # pieces a background copy and the step's thread can share: small,
# so that the step rarely waits on a piece the low-priority thread was preempted in


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


class _CopyBatch:
    """CPU copies that any thread may take pieces of; ``finish`` returns when all are done."""

    def __init__(self, pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        self._pairs = pairs
        self._next = 0
        self._busy = 0
        self._error: BaseException | None = None
        self._cond = threading.Condition()

    def run(self) -> None:
        while True:
            with self._cond:
                if self._next >= len(self._pairs):
                    return
                dst, src = self._pairs[self._next]
                self._next += 1
                self._busy += 1
            try:
                dst.copy_(src)  # releases the GIL
            except BaseException as exc:  # noqa: BLE001 - re-raised by finish()
                self._error = exc
            finally:
                with self._cond:
                    self._busy -= 1
                    self._cond.notify_all()

    def finish(self) -> None:
        self.run()
        with self._cond:
            while self._busy:
                self._cond.wait()
        if self._error is not None:
            raise self._error


_jobs: queue.SimpleQueue[_CopyBatch] = queue.SimpleQueue()
_copy_thread: threading.Thread | None = None
_start_lock = threading.Lock()


def _copy_forever() -> None:
    # Niceness 19: the copy should use the time this rank's core would sit idle, not take
    # it from the training thread (a thread's own niceness on Linux; elsewhere a no-op).
    with contextlib.suppress(Exception):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    while True:
        _jobs.get().run()


def _submit(batch: _CopyBatch) -> None:
    global _copy_thread
    with _start_lock:
        if _copy_thread is None:
            # One per process, shared by every trial a warm worker runs.
            _copy_thread = threading.Thread(
                target=_copy_forever, name="resolute-snapshot-copy", daemon=True
            )
            _copy_thread.start()
    _jobs.put(batch)


def _pieces(dst: torch.Tensor, src: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    n = src.numel()
    if n <= CHUNK_ELEMENTS or not src.is_contiguous():
        return [(dst, src)]
    flat_dst, flat_src = dst.view(-1), src.view(-1)
    return [
        (flat_dst[i : i + CHUNK_ELEMENTS], flat_src[i : i + CHUNK_ELEMENTS])
        for i in range(0, n, CHUNK_ELEMENTS)
    ]


class SnapshotCopier:
    """Copies tensors into reused CPU buffers; one per ``ElasticState``."""

    def __init__(self) -> None:
        self._side: torch.cuda.Stream | None = None
        self._done: torch.cuda.Event | None = None
        self._stream: Any = None  # the side stream once this snapshot has used it
        self._defer = False  # copying what only optimizer.step() changes
        self._on_gpu = False  # this snapshot queued copies on a GPU
        self._gpu_in_flight = False  # the last snapshot's GPU copies may not have landed
        self._cpu_pairs: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._cpu_batch: _CopyBatch | None = None
        self._hooked: Any = None  # the optimizer whose step waits for deferred copies
        self._hook: Any = None

    # -- one snapshot -----------------------------------------------------------------------

    def begin(self, optimizer: Any) -> None:
        # The previous snapshot's CPU buffers are about to be written again (on a GPU the
        # side stream runs its copies in order).
        self._finish_cpu()
        self._on_gpu = False
        self._stream = None
        self._ensure_hook(optimizer)

    def copy_module_state(self, previous: Any, module: Any) -> dict[str, Any]:
        """``module.state_dict()`` copied: parameters deferred like optimizer state, buffers
        at once (the next forward pass may update them in place)."""
        state = module.state_dict()
        params = {n for n, _ in module.named_parameters(remove_duplicate=False)}
        old = previous if isinstance(previous, dict) else {}
        out: dict[str, Any] = {}
        for name, value in state.items():
            out[name] = self.copy(old.get(name), value, defer=name in params)
        return out

    def copy(self, previous: Any, obj: Any, *, defer: bool = False) -> Any:
        """``obj`` copied, reusing ``previous``'s tensors where they fit. ``defer``: only
        the hooked optimizer's step changes ``obj``, so its copy may finish later."""
        self._defer = defer and self._hooked is not None
        try:
            return self._copy(previous, obj)
        finally:
            self._defer = False

    def end(self) -> None:
        if self._cpu_pairs:
            self._cpu_batch = _CopyBatch(self._cpu_pairs)
            self._cpu_pairs = []
            _submit(self._cpu_batch)
        if self._on_gpu:
            side = self._side_stream()
            # Copies went on the current stream too (buffers): the event covers them.
            side.wait_stream(torch.cuda.current_stream())
            if self._done is None:
                self._done = torch.cuda.Event()  # type: ignore[no-untyped-call]
            self._done.record(side)
            self._gpu_in_flight = True

    def wait(self) -> None:
        """Block until the last snapshot is complete in host memory."""
        self._finish_cpu()
        if self._gpu_in_flight and self._done is not None:
            self._done.synchronize()
        self._gpu_in_flight = False

    # -- tensors ----------------------------------------------------------------------------

    def _copy(self, previous: Any, obj: Any) -> Any:
        if isinstance(obj, torch.Tensor):
            return self._copy_tensor(previous, obj)
        if isinstance(obj, dict):
            old = previous if isinstance(previous, dict) else {}
            return {k: self._copy(old.get(k), v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            olds = (
                list(previous)
                if isinstance(previous, (list, tuple)) and len(previous) == len(obj)
                else [None] * len(obj)
            )
            return type(obj)(self._copy(o, v) for o, v in zip(olds, obj, strict=True))
        return obj

    def _copy_tensor(self, previous: Any, src: torch.Tensor) -> torch.Tensor:
        src = src.detach()
        if src.layout != torch.strided or src.is_quantized:
            return src.to("cpu", copy=True)  # rare kinds: a plain, synchronous copy
        dst = (
            previous
            if _reusable(previous, src)
            else torch.empty(src.shape, dtype=src.dtype, pin_memory=src.is_cuda)
        )
        if not src.is_cuda:
            if self._defer:
                self._cpu_pairs.extend(_pieces(dst, src))
            else:
                dst.copy_(src)
            return dst
        self._on_gpu = True
        if not self._defer:
            dst.copy_(src, non_blocking=True)  # on the current stream, before later work
            return dst
        side = self._start_side(src.device)
        with torch.cuda.stream(side):
            dst.copy_(src, non_blocking=True)
        # The caching allocator must not hand ``src``'s memory to another stream while the
        # side stream still reads it (an optimizer may replace its state tensors).
        src.record_stream(side)
        return dst

    def _side_stream(self) -> torch.cuda.Stream:
        if self._side is None:
            self._side = torch.cuda.Stream()  # type: ignore[no-untyped-call]
        return self._side

    def _start_side(self, device: torch.device) -> torch.cuda.Stream:
        side = self._side_stream()
        if self._stream is None:
            # The step that produced this state comes before the side stream's copies.
            self._stream = side
            side.wait_stream(torch.cuda.current_stream(device))
        return side

    def _finish_cpu(self) -> None:
        batch, self._cpu_batch = self._cpu_batch, None
        if batch is not None:
            batch.finish()

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
        # The step changes parameters and optimizer state in place: after the copies.
        self._finish_cpu()
        if self._gpu_in_flight and self._done is not None:
            torch.cuda.current_stream().wait_event(self._done)
