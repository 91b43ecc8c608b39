"""The tracker's copy of MLflow's limits (kept so that importing the scheduler does not
import mlflow) agrees with the installed MLflow, and the scheduler imports no mlflow."""

from __future__ import annotations

import subprocess
import sys

import pytest

from resolute.runtime import tracking_batch

LIMITS = [
    "MAX_ENTITY_KEY_LENGTH",
    "MAX_METRICS_PER_BATCH",
    "MAX_PARAM_VAL_LENGTH",
    "MAX_PARAMS_TAGS_PER_BATCH",
    "MAX_TAG_VAL_LENGTH",
]


@pytest.mark.parametrize("name", LIMITS)
def test_limits_match_mlflow(name: str) -> None:
    from mlflow.utils import validation

    assert getattr(tracking_batch, name) == getattr(validation, name)


def test_importing_the_scheduler_leaves_mlflow_for_later() -> None:
    code = "import sys, resolute.runtime.scheduler; print('mlflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
