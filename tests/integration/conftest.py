"""Integration fixtures: one embedded Ray per test session, shared by the tests that need it."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def ray_local():
    """An embedded local Ray with 4 logical CPUs (the machine has 2 cores; the tests' actors
    mostly wait). Tests that need their own multi-node cluster use ray.cluster_utils instead
    and must not run while this one is up in the same process: they shut it down first."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    ray.init(
        num_cpus=int(os.environ.get("RESOLUTE_TEST_CPUS", "4")),
        include_dashboard=False,
        namespace="resolute-test",
        log_to_driver=True,
        _temp_dir=os.environ["RAY_TMPDIR"],
    )
    yield ray
    ray.shutdown()
