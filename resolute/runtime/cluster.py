"""The cluster as the scheduler sees it: the alive nodes and their resources, and the demand
sent to the Ray autoscaler. No policy here: which trial runs where is ``policy.py``'s
business; this module only reads Ray and talks to the autoscaler.

**What ``request_resources`` means.** ``ray.autoscaler.sdk.request_resources(bundles=...)``
sets a *target*, not extra demand: the autoscaler grows the cluster until all the bundles
fit at once, packing them onto the nodes as if every node were idle, and keeps that target
until the next call replaces it (one target per cluster; the last caller wins). Sent alone,
the bundles the scheduler cannot place would "fit" on nodes that are busy and nothing would
be added. So :meth:`ClusterView.request` sends what each node has in use now plus the unmet
bundles, and withdraws the target (``bundles=[]``) once nothing is unmet: a target left in
place keeps its nodes from ever being released as idle.

**Without an autoscaler** (an embedded ``ray.init()``, or ``ray start --head`` with no
``--autoscaling-config``) the head still runs Ray's monitor, with a read-only node provider:
the request is written to the GCS key-value store, the monitor lists it as demand in
``ray status``, and nothing else happens. A request there is a harmless no-op.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

# Joining a cluster as a driver lives in driver.py; its names stay importable from here.
from resolute.runtime.driver import (
    ClusterUnreachable as ClusterUnreachable,
)
from resolute.runtime.driver import (
    connect_driver as connect_driver,
)
from resolute.runtime.driver import (
    enable_token_auth_if_available as enable_token_auth_if_available,
)
from resolute.runtime.driver import (
    resolve_address as resolve_address,
)
from resolute.runtime.policy import NodeSpec

log = logging.getLogger("resolute.cluster")

Bundle = dict[str, float]

HEAD_RESOURCE = "node:__internal_head__"
DEFAULT_MAX_PENDING_BUNDLES = 64
# Resources that say nothing about slots: memory is not scheduled on here, node:<ip> and
# placement-group resources (CPU_group_<id>) are Ray's bookkeeping.
_MEMORY = frozenset({"memory", "object_store_memory"})


def is_slot_resource(name: str) -> bool:
    """CPU, GPU and custom resources; not memory, ``node:*`` or placement-group bookkeeping."""
    return (
        name not in _MEMORY
        and not name.startswith("node:")
        and not name.startswith("accelerator_type:")
        and "_group_" not in name
    )


def slot_resources(resources: Mapping[str, float]) -> Bundle:
    return {k: float(v) for k, v in resources.items() if is_slot_resource(k) and v > 0}


class ClusterView:
    """Nodes and autoscaler requests for the scheduler. Needs ``ray.init`` done first.

    ``max_pending_bundles``: the most unmet bundles sent to the autoscaler at once (a
    search of 10,000 queued trials must not ask a cloud for 10,000 GPUs); the rest are
    asked for as the first ones are met.
    """

    def __init__(
        self,
        *,
        max_pending_bundles: int = DEFAULT_MAX_PENDING_BUNDLES,
        request_fn: Callable[[list[Bundle]], None] | None = None,
    ) -> None:
        if max_pending_bundles < 1:
            raise ValueError(f"max_pending_bundles must be at least 1, got {max_pending_bundles}")
        self.max_pending_bundles = max_pending_bundles
        self._request_fn = request_fn or _send_to_autoscaler
        self._pending: list[Bundle] = []
        self._sent: list[Bundle] | None = None  # the target last sent; None: none in place
        self._nodes: tuple[float, list[NodeSpec]] | None = None  # (when read, nodes)

    # ------------------------------------------------------------------ nodes
    def nodes(self, *, max_age_s: float = 0.0) -> list[NodeSpec]:
        """The alive nodes, each with its total slot resources (CPU, GPU, custom).

        ``max_age_s``: a list read from the GCS at most that long ago will do (a GCS round
        trip per allocation round costs ~1 ms of the scheduler's event loop)."""
        now = time.monotonic()
        if self._nodes is not None and now - self._nodes[0] <= max_age_s:
            return list(self._nodes[1])
        nodes = [
            NodeSpec(node_id=n["NodeID"], resources=slot_resources(n.get("Resources") or {}))
            for n in _ray_nodes()
            if n.get("Alive")
        ]
        self._nodes = (now, nodes)
        return list(nodes)

    def node_of_current_process(self) -> str:
        import ray

        return str(ray.get_runtime_context().get_node_id())

    # ------------------------------------------------------------- autoscaler
    def request(self, bundles: Sequence[Mapping[str, float]]) -> None:
        """Ask the autoscaler for room for ``bundles``: the slots the scheduler wants now
        and cannot place (one bundle per slot, e.g. ``{"CPU": 1, "GPU": 1}``).

        Call it after every allocation with what is still unmet; an empty list withdraws
        the request. The target sent is the cluster's current use, node by node, plus
        the unmet bundles (at most ``max_pending_bundles`` of them); it is re-sent only
        when it changes."""
        unmet = [slot_resources(b) for b in bundles]
        unmet = [b for b in unmet if b]
        if len(unmet) > self.max_pending_bundles:
            log.info(
                "asking the autoscaler for %d of %d unmet slot bundles (max_pending_bundles)",
                self.max_pending_bundles,
                len(unmet),
            )
            unmet = unmet[: self.max_pending_bundles]
        if not unmet:
            self.withdraw()
            return
        target = sorted_bundles(in_use_bundles() + unmet)
        self._pending = unmet
        if target != self._sent:
            self._request_fn(target)
            self._sent = target
            log.info("autoscaler target: %s", describe_bundles(target))

    def withdraw(self) -> None:
        """Take back the request (nothing unmet, or the scheduler is stopping)."""
        self._pending = []
        if self._sent is not None:
            self._request_fn([])
            self._sent = None
            log.info("autoscaler request withdrawn")

    def pending(self) -> list[Bundle]:
        """The unmet bundles the autoscaler was last asked for (empty: no request)."""
        return [dict(b) for b in self._pending]

    def close(self) -> None:
        self.withdraw()

    # ----------------------------------------------------------------- status
    def status_snapshot(self) -> dict[str, Any]:
        """Plain data for ``resolute cluster status``: every node Ray knows (dead ones too,
        for a while after they leave), what this view has pending, and the autoscaler's own
        report where one runs."""
        return {
            "nodes": node_records(),
            "pending_requests": self.pending(),
            "autoscaler": autoscaler_report(),
        }


# --------------------------------------------------------------------- helpers
def _ray_nodes() -> list[dict[str, Any]]:
    import ray

    return list(ray.nodes())  # type: ignore[no-untyped-call]


def node_records() -> list[dict[str, Any]]:
    return [
        {
            "node_id": n["NodeID"],
            "alive": bool(n.get("Alive")),
            "address": n.get("NodeManagerAddress", ""),
            "head": HEAD_RESOURCE in (n.get("Resources") or {}),
            "resources": slot_resources(n.get("Resources") or {}),
        }
        for n in _ray_nodes()
    ]


def head_node_id() -> str | None:
    """The head node's id (where a detached control plane must live: worker nodes come and
    go with the autoscaler)."""
    for n in _ray_nodes():
        if n.get("Alive") and HEAD_RESOURCE in (n.get("Resources") or {}):
            return str(n["NodeID"])
    return None


def in_use_bundles() -> list[Bundle]:
    """What each alive node has in use now, one bundle per node.

    Two sources, per node and resource the larger: GCS's resource view (everything in use,
    tasks and actors too, but it trails a new reservation by up to a second) and the
    placement-group table (current the moment a group is ready; what resolute's trials
    hold)."""
    import ray
    from ray.autoscaler.v2.sdk import get_cluster_status
    from ray.util import placement_group_table

    status = get_cluster_status(ray.get_runtime_context().gcs_address)
    used: dict[str, Bundle] = {}
    for info in [*status.active_nodes, *status.idle_nodes]:
        usage = info.resource_usage.usage if info.resource_usage else []
        used[str(info.node_id)] = {
            u.resource_name: float(u.used)
            for u in usage
            if is_slot_resource(u.resource_name) and u.used > 1e-9
        }
    reserved: dict[str, Bundle] = {}
    for group in placement_group_table().values():
        if group.get("state") != "CREATED":
            continue  # a pending group is demand the autoscaler already sees
        for index, bundle in group.get("bundles", {}).items():
            node = group.get("bundles_to_node_id", {}).get(index)
            if node is not None and node in used:
                held = reserved.setdefault(node, {})
                for k, v in slot_resources(bundle).items():
                    held[k] = held.get(k, 0.0) + v
    for node, held in reserved.items():
        for k, v in held.items():
            used[node][k] = max(used[node].get(k, 0.0), v)
    return [b for b in used.values() if b]


def autoscaler_report() -> dict[str, Any] | None:
    """The autoscaler (v1) monitor's last report: node types, nodes launching, failed,
    the request in place; None where no v1 monitor has written one (v2, or just started).

    Every head runs a monitor, also with no autoscaling config (a read-only one that only
    mirrors the nodes it finds): ``autoscaling`` tells the two apart."""
    from ray._private import ray_constants
    from ray.experimental.internal_kv import _internal_kv_get

    try:
        raw = _internal_kv_get(ray_constants.DEBUG_AUTOSCALING_STATUS)
    except Exception:  # a Ray without this key: no report, not an error
        log.debug("no autoscaler report", exc_info=True)
        return None
    if not raw:
        return None
    data = json.loads(raw)
    report = data.get("autoscaler_report") or {}
    load = data.get("load_metrics_report") or {}
    types = set((report.get("node_type_mapping") or {}).values())
    types |= set(report.get("active_nodes") or {}) | set(report.get("pending_launches") or {})
    return {
        "autoscaling": any(not _is_mirrored_type(t) for t in types),
        "node_types": sorted(types),
        "pending_launches": dict(report.get("pending_launches") or {}),
        "pending_nodes": [list(p) for p in report.get("pending_nodes") or []],
        "failed_nodes": [list(f) for f in report.get("failed_nodes") or []],
        "requested": [
            {"bundle": dict(b), "count": int(c)} for b, c in load.get("request_demand") or []
        ],
        "time": data.get("time"),
    }


def _is_mirrored_type(node_type: str) -> bool:
    # The read-only monitor names each node's type "node_<its id>" (format_readonly_node_type).
    return re.fullmatch(r"node_[0-9a-f]{16,}", node_type) is not None


def can_autoscale() -> bool:
    """Whether an autoscaler may add nodes to this cluster (``ray up``/KubeRay clusters and
    ``ray start --head --autoscaling-config``; not an embedded ``ray.init()`` or a plain
    ``ray start`` cluster). Autoscaler v1 is read from its report, v2 from GCS."""
    report = autoscaler_report()
    if report is not None:
        return bool(report["autoscaling"])
    import ray
    from ray.autoscaler.v2.sdk import get_cluster_status

    try:
        status = get_cluster_status(ray.get_runtime_context().gcs_address)
    except Exception:
        log.debug("no cluster status from GCS", exc_info=True)
        return False
    if status.stats.autoscaler_version in (None, "", "0"):
        return False  # no v2 autoscaler has reported
    nodes = [*status.active_nodes, *status.idle_nodes, *status.pending_nodes]
    names = {n.ray_node_type_name for n in nodes if n.ray_node_type_name}
    return bool(status.pending_launches) or any(not _is_mirrored_type(t) for t in names)


def _send_to_autoscaler(bundles: list[Bundle]) -> None:
    from ray.autoscaler.sdk import request_resources

    request_resources(bundles=bundles)


def withdraw_autoscaler_request() -> None:
    """Clear the cluster's autoscaler target whoever set it (``resolute cluster down``: a
    scheduler that died cannot withdraw its own)."""
    _send_to_autoscaler([])


def sorted_bundles(bundles: Sequence[Mapping[str, float]]) -> list[Bundle]:
    return sorted(({k: float(v) for k, v in b.items()} for b in bundles), key=_bundle_key)


def _bundle_key(bundle: Mapping[str, float]) -> tuple[tuple[str, float], ...]:
    return tuple(sorted(bundle.items()))


def describe_bundles(bundles: Sequence[Mapping[str, float]]) -> str:
    """``2 x {CPU: 1, GPU: 1} + 1 x {CPU: 4}``: bundles grouped by shape."""
    counts = Counter(_bundle_key(b) for b in bundles)
    if not counts:
        return "none"
    parts = []
    for key, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        shape = ", ".join(f"{k}: {v:g}" for k, v in key)
        parts.append(f"{n} x {{{shape}}}")
    return " + ".join(parts)
