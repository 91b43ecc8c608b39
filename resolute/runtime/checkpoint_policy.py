"""Which checkpoints a keep policy deletes. Pure."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

from resolute.search.base import rank_value


class CheckpointLike(Protocol):
    @property
    def uri(self) -> str: ...
    @property
    def step(self) -> int: ...
    @property
    def metric(self) -> float | None: ...


def checkpoints_to_delete(
    checkpoints: Sequence[CheckpointLike],
    *,
    keep: str,
    keep_count: int,
    smaller_is_better: bool,
    protected: Iterable[str] = (),
) -> list[str]:
    """``keep``: "all" deletes nothing; "latest" keeps the ``keep_count`` newest; "best" keeps
    the ``keep_count`` with the best metric (unlabelled ones rank worst, newer first among
    equals). ``protected`` uris are never deleted (the latest checkpoint a resume starts
    from, a donor's checkpoint a PBT clone has yet to load)."""
    if keep == "all" or len(checkpoints) <= keep_count:
        return []
    if keep == "best":
        ordered = sorted(
            checkpoints,
            key=lambda c: (rank_value(c.metric, smaller_is_better=smaller_is_better), -c.step),
        )
    else:
        ordered = sorted(checkpoints, key=lambda c: -c.step)
    kept = {c.uri for c in ordered[:keep_count]} | set(protected)
    return [c.uri for c in checkpoints if c.uri not in kept]
