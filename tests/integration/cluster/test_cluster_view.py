"""ClusterView on an embedded Ray (no autoscaler): nodes, the request_resources target it
writes (what the autoscaler would read), withdrawal, the cap, and that asking an absent
autoscaler for room changes nothing else."""

from __future__ import annotations

import json
import socket
import time
from typing import Any

import pytest
from ray.util.placement_group import placement_group, remove_placement_group

from resolute.runtime.cluster import (
    ClusterUnreachable,
    ClusterView,
    autoscaler_report,
    can_autoscale,
    describe_bundles,
    head_node_id,
    in_use_bundles,
    resolve_address,
)

from .fake_cluster import wait_for

pytestmark = pytest.mark.integration

GPU_SLOT = {"CPU": 1.0, "GPU": 1.0}


def autoscaler_target() -> list[dict[str, float]] | None:
    from ray._private import ray_constants
    from ray.experimental.internal_kv import _internal_kv_get

    raw = _internal_kv_get(ray_constants.AUTOSCALER_RESOURCE_REQUEST_CHANNEL)
    return json.loads(raw) if raw else None


class CountingSend:
    """Forwards to the real request_resources and counts the calls."""

    def __init__(self) -> None:
        from ray.autoscaler.sdk import request_resources

        self._send = request_resources
        self.calls: list[list[dict[str, float]]] = []

    def __call__(self, bundles: list[dict[str, float]]) -> None:
        self.calls.append(bundles)
        self._send(bundles=bundles)


def test_nodes_are_the_alive_nodes_with_their_slot_resources(ray_local: Any) -> None:
    view = ClusterView()
    nodes = view.nodes()
    assert len(nodes) == 1
    resources = nodes[0].resources
    assert resources["CPU"] == ray_local.cluster_resources()["CPU"]
    assert not any(k.startswith("node:") or "memory" in k for k in resources)
    assert nodes[0].node_id == head_node_id() == view.node_of_current_process()


def test_request_sends_what_is_in_use_plus_the_unmet_bundles(ray_local: Any) -> None:
    send = CountingSend()
    view = ClusterView(request_fn=send)
    group = placement_group([{"CPU": 1.0}, {"CPU": 1.0}])
    ray_local.get(group.ready(), timeout=60)
    try:
        view.request([GPU_SLOT, GPU_SLOT])
        target = autoscaler_target()
        assert target is not None
        # The two reserved CPUs are one node's use; then the two unmet GPU slots.
        assert [b for b in target if "GPU" in b] == [GPU_SLOT, GPU_SLOT]
        cpu_only = [b for b in target if "GPU" not in b]
        assert len(cpu_only) == 1 and cpu_only[0]["CPU"] >= 2.0
        assert view.pending() == [GPU_SLOT, GPU_SLOT]
        calls = len(send.calls)
        view.request([GPU_SLOT, GPU_SLOT])
        assert len(send.calls) == calls, "an unchanged target is not sent again"
    finally:
        remove_placement_group(group)
    view.request([])
    assert send.calls[-1] == []
    assert autoscaler_target() == []
    assert view.pending() == []
    calls = len(send.calls)
    view.request([])
    assert len(send.calls) == calls, "nothing to withdraw twice"


def test_in_use_counts_a_placement_group_the_moment_it_is_ready(ray_local: Any) -> None:
    # GCS's view trails changes both ways (a group removed by an earlier test may still
    # count for a moment): start from a settled zero.
    wait_for(lambda: not in_use_bundles(), 30, "GCS sees nothing in use")
    group = placement_group([{"CPU": 1.0}])
    ray_local.get(group.ready(), timeout=60)
    try:
        assert in_use_bundles() == [{"CPU": 1.0}]
    finally:
        remove_placement_group(group)


def test_request_is_capped(ray_local: Any) -> None:
    view = ClusterView(max_pending_bundles=3, request_fn=CountingSend())
    view.request([GPU_SLOT] * 10)
    assert view.pending() == [GPU_SLOT] * 3
    target = autoscaler_target() or []
    assert sum(1 for b in target if "GPU" in b) == 3
    view.close()
    assert autoscaler_target() == []
    with pytest.raises(ValueError, match="max_pending_bundles"):
        ClusterView(max_pending_bundles=0)


def test_no_autoscaler_request_is_harmless(ray_local: Any) -> None:
    """Without an autoscaler the monitor only lists the demand; work still runs."""
    view = ClusterView()
    view.request([{"CPU": 1000.0}])
    try:
        wait_for(lambda: _requested(autoscaler_report()) != [], 30, "monitor lists the request")
        report = autoscaler_report()
        assert report is not None
        assert {"bundle": {"CPU": 1000.0}, "count": 1} in report["requested"]
        assert report["autoscaling"] is False and not can_autoscale()
        assert report["pending_launches"] == {}
        assert len(view.nodes()) == 1

        @ray_local.remote(num_cpus=1)
        def square(x: int) -> int:
            return x * x

        assert ray_local.get(square.remote(7), timeout=60) == 49
    finally:
        view.withdraw()


def _requested(report: dict[str, Any] | None) -> list[Any]:
    return [] if report is None else [r for r in report["requested"] if r["bundle"]]


def test_status_snapshot_shape(ray_local: Any) -> None:
    view = ClusterView(request_fn=CountingSend())
    view.request([GPU_SLOT])
    try:
        snap = view.status_snapshot()
    finally:
        view.withdraw()
    assert snap["pending_requests"] == [GPU_SLOT]
    (node,) = snap["nodes"]
    assert node["alive"] and node["head"] and node["resources"]["CPU"] >= 1
    assert set(node) >= {"node_id", "resources", "alive", "address", "head"}
    json.dumps(snap)  # plain data: the CLI prints it with --json


def test_describe_bundles_groups_by_shape() -> None:
    text = describe_bundles([GPU_SLOT, {"CPU": 4.0}, GPU_SLOT])
    assert text == "2 x {CPU: 1, GPU: 1} + 1 x {CPU: 4}"
    assert describe_bundles([]) == "none"


def test_unreachable_address_fails_fast_with_what_to_do(monkeypatch: Any, tmp_path: Any) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    start = time.monotonic()
    with pytest.raises(ClusterUnreachable, match=r"no Ray cluster at 127\.0\.0\.1:\d+.*ray start"):
        resolve_address(f"127.0.0.1:{port}")
    assert time.monotonic() - start < 10
    with pytest.raises(ClusterUnreachable, match="not host:port"):
        resolve_address("nonsense")
    # "auto" with no `ray start` recorded in this RAY_TMPDIR
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(ClusterUnreachable, match="ray start --head"):
        resolve_address(None)
