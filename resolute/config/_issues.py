"""Semantic problems found by a model's own checks, carried through pydantic to the loader.

A model validator can raise only one error, but one section may hold several problems
(a PBT searcher with both ``population_size`` and ``perturb_every`` out of range). Each
check returns a list of :class:`Issue`; :func:`raise_issues` packs them into one pydantic
error whose context the loader unpacks again, so every problem keeps its own field path
and YAML line.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic_core import PydanticCustomError

SEMANTIC_ERROR = "resolute_semantic"

PathPart = str | int


@dataclass(frozen=True)
class Issue:
    """One problem, located relative to the model that found it."""

    path: tuple[PathPart, ...]  # relative to the model that raised it; () = the model itself
    message: str
    hint: str = ""


def raise_issues(issues: list[Issue]) -> None:
    """Raise one pydantic error carrying every issue, or nothing when the list is empty."""
    if not issues:
        return
    summary = "; ".join(f"{'.'.join(map(str, i.path)) or '<here>'}: {i.message}" for i in issues)
    raise PydanticCustomError(SEMANTIC_ERROR, "{summary}", {"summary": summary, "issues": issues})
