"""What a worker is (``Shape``: one slot's resources and the runtime_env of its process), and
the Ray placement-group calls the pool makes: waiting for a group to be placed, checking
whether free resources could hold one, and telling a runtime_env failure apart."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from resolute.elastic.spec import TrialSpec


@dataclass(frozen=True)
class Shape:
    """What one worker is: its resources (one rank's slot) and the Ray runtime_env its
    process was started with (canonical JSON, hashable; None: no runtime_env)."""

    cpus: float = 1.0
    gpus: float = 0.0
    runtime_env: str | None = None

    @classmethod
    def for_spec(cls, spec: TrialSpec) -> Shape:
        """The workers a trial needs: its slot resources and its runtime_env."""
        return cls(
            cpus=spec.cpus_per_slot,
            gpus=spec.gpus_per_slot,
            runtime_env=canonical_runtime_env(spec.runtime_env),
        )

    def actor_runtime_env(self) -> dict[str, Any] | None:
        return None if self.runtime_env is None else dict(json.loads(self.runtime_env))

    def bundle(self) -> dict[str, float]:
        bundle = {"CPU": self.cpus} if self.cpus > 0 else {}
        if self.gpus > 0:
            bundle["GPU"] = self.gpus
        # A bundle may not be empty; a zero-resource worker still takes a sliver of CPU.
        return bundle or {"CPU": 0.01}


def canonical_runtime_env(env: dict[str, Any] | None) -> str | None:
    """One spelling per runtime_env (sorted keys), so equal environments share workers."""
    return json.dumps(env, sort_keys=True, separators=(",", ":")) if env else None


def free_resources_hold(bundles: Sequence[dict[str, float]]) -> bool:
    """Whether the cluster's unreserved resources cover ``bundles`` (in all, not per node:
    a PACK group may spread over nodes)."""
    import ray

    need: Counter[str] = Counter()
    for bundle in bundles:
        need.update(bundle)
    free = ray.available_resources()  # type: ignore[no-untyped-call]
    return all(free.get(k, 0.0) >= v - 1e-9 for k, v in need.items())


def is_runtime_env_failure(exc: BaseException) -> bool:
    from ray.exceptions import RuntimeEnvSetupError

    return isinstance(exc, RuntimeEnvSetupError) or isinstance(
        getattr(exc, "cause", None), RuntimeEnvSetupError
    )


def first_lines(exc: BaseException, n: int = 6) -> str:
    return " | ".join(line.strip() for line in str(exc).strip().splitlines()[:n] if line.strip())


async def ready_or(pg: Any, timeout: float, interrupt: asyncio.Event | None) -> bool:
    """Wait up to ``timeout`` for ``pg`` to be placed, or until ``interrupt`` is set."""
    ready = asyncio.ensure_future(pg.ready())
    waits: set[asyncio.Future[Any]] = {ready}
    if interrupt is not None:
        waits.add(asyncio.ensure_future(interrupt.wait()))
    try:
        done, _ = await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for fut in waits:
            if not fut.done():
                fut.cancel()
    return ready in done and ready.exception() is None
