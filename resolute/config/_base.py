"""Shared pieces of the config models: the frozen strict base class and strict scalars.

Scalars are strict so that YAML surprises surface as errors instead of silent coercions:
``max_trials: yes`` is not 1, ``max_time: "64"`` is not 64, ``max_trials: 2.5`` is not 2.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Strict

StrictInt = Annotated[int, Strict()]
StrictFloat = Annotated[float, Strict()]  # also accepts ints: ``max_time: 64``
StrictBool = Annotated[bool, Strict()]
StrictStr = Annotated[str, Strict()]


class Section(BaseModel):
    """Base of every config model: immutable, and unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
