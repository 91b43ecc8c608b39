"""ClusterView against a real Ray autoscaler (v1, fake multi-node provider): unmet slot
bundles make it add nodes; the slots already in use count, so a bundle that would "fit" on
a busy node still gets a node of its own; withdrawing the request lets idle nodes go."""

from __future__ import annotations

import json
import time

import pytest
import ray
from ray.util.placement_group import placement_group, remove_placement_group

from resolute.runtime.cluster import ClusterView

from .fake_cluster import FakeAutoscalingCluster, wait_for

pytestmark = pytest.mark.integration

SLOT = {"CPU": 1.0, "slot": 1.0}
GROW_TIMEOUT_S = 120.0
RELEASE_TIMEOUT_S = 120.0


def slot_nodes(view: ClusterView) -> int:
    return sum(1 for n in view.nodes() if n.resources.get("slot", 0) > 0)


def autoscaler_target() -> list[dict[str, float]]:
    """What the v1 autoscaler reads: the request_resources() target in the GCS KV store."""
    from ray._private import ray_constants
    from ray.experimental.internal_kv import _internal_kv_get

    raw = _internal_kv_get(ray_constants.AUTOSCALER_RESOURCE_REQUEST_CHANNEL)
    return json.loads(raw) if raw else []


def test_request_grows_the_cluster_and_withdraw_releases_it(
    autoscaling_cluster: FakeAutoscalingCluster,
) -> None:
    view = ClusterView()
    timings: dict[str, float] = {}
    start = time.monotonic()
    assert slot_nodes(view) == 0
    assert len(view.nodes()) == 1, "only the head, before any demand"

    # One slot beyond the head: the autoscaler adds a node that has it.
    view.request([SLOT])
    assert view.pending() == [SLOT]
    assert SLOT in autoscaler_target()
    timings["first node"] = wait_for(lambda: slot_nodes(view) >= 1, GROW_TIMEOUT_S, "grow")

    # Occupy it, then ask for one more slot: the target counts the busy one, so the
    # autoscaler cannot mistake the existing node for room and adds a second.
    held = placement_group([SLOT])
    ray.get(held.ready(), timeout=60)
    view.request([SLOT])
    target = autoscaler_target()
    assert sum(1 for b in target if b.get("slot")) == 2, target
    timings["second node"] = wait_for(lambda: slot_nodes(view) >= 2, GROW_TIMEOUT_S, "grow")
    second = placement_group([SLOT])
    ray.get(second.ready(), timeout=60)  # the new node really has the room

    # Nothing unmet: the request is withdrawn, and once the slots are free the nodes go.
    view.request([])
    assert view.pending() == []
    assert autoscaler_target() == []
    remove_placement_group(held)
    remove_placement_group(second)
    timings["release"] = wait_for(lambda: slot_nodes(view) == 0, RELEASE_TIMEOUT_S, "release")
    assert len(view.nodes()) == 1
    print(f"autoscaling timings (s): {timings}, total {time.monotonic() - start:.1f}")
