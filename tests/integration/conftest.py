"""Integration fixtures: one embedded Ray shared by the tests that need it.

Tests that need a multi-node cluster (``ray.cluster_utils.Cluster``) shut the shared Ray
down first; the next test that asks for ``ray_local`` gets a fresh one."""

from __future__ import annotations

import os

import pytest


def _init() -> None:
    import ray

    ray.init(
        num_cpus=int(os.environ.get("RESOLUTE_TEST_CPUS", "4")),
        include_dashboard=False,
        namespace="resolute-test",
        log_to_driver=True,
        _temp_dir=os.environ["RAY_TMPDIR"],
    )


@pytest.fixture(scope="session")
def _ray_session():
    import ray

    yield
    if ray.is_initialized():
        ray.shutdown()


@pytest.fixture(scope="module")
def ray_local(_ray_session):
    """An embedded local Ray with 4 logical CPUs (the machine has 2 cores; the tests' actors
    mostly wait), started on first use and kept for the session."""
    import ray

    if not ray.is_initialized():
        _init()
    return ray
