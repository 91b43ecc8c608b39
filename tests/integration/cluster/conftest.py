"""Fixtures for tests that need a cluster the Ray autoscaler grows and shrinks.

``autoscaling_cluster``: a fake autoscaling cluster (see ``fake_cluster.py``) with this
process connected as a driver; by default a head with 1 CPU and up to 2 worker nodes of
``{"CPU": 1, "slot": 1}``, released 6 s after they go idle. Another shape::

    @pytest.mark.parametrize(
        "autoscaling_cluster",
        [{"head_resources": {"CPU": 0}, "worker_types": {"w": WorkerType({"CPU": 2})}}],
        indirect=True,
    )

``fake_cluster_factory``: start clusters yourself (not connected), stopped at teardown.

The shared embedded Ray (``ray_local``) is shut down first if this process runs one; the
next test that asks for it starts it again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from .fake_cluster import FakeAutoscalingCluster


@pytest.fixture
def fake_cluster_factory() -> Iterator[Callable[..., FakeAutoscalingCluster]]:
    started: list[FakeAutoscalingCluster] = []

    def make(**kwargs: Any) -> FakeAutoscalingCluster:
        cluster = FakeAutoscalingCluster(**kwargs)
        started.append(cluster)
        return cluster.start()

    yield make
    import ray

    if ray.is_initialized():
        ray.shutdown()
    for cluster in started:
        cluster.stop()


@pytest.fixture
def autoscaling_cluster(
    request: pytest.FixtureRequest,
    fake_cluster_factory: Callable[..., FakeAutoscalingCluster],
) -> Iterator[FakeAutoscalingCluster]:
    import ray

    if ray.is_initialized():
        ray.shutdown()
    cluster = fake_cluster_factory(**getattr(request, "param", {}))
    cluster.connect(namespace="resolute-test")
    yield cluster
    ray.shutdown()
