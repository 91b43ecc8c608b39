"""``resolute cluster up | status | down``: the control plane on a running Ray cluster.

``up`` starts the detached scheduler on the cluster's head node and returns; experiments
submitted with ``--address``/``RAY_ADDRESS`` then run there without a driver attached.
``status`` shows nodes, slots, each experiment's share and what the autoscaler was asked for.
``down`` asks the scheduler to stop (it pauses its active experiments) and removes it.
None of them starts Ray: a cluster comes from ``ray start --head``, ``ray up`` or KubeRay.
Heavy imports (Ray) stay inside the commands so that ``resolute --help`` stays instant.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import click

EXIT_NO_CLUSTER = 2
SHUTDOWN_TIMEOUT_S = 120.0
READY_TIMEOUT_S = 120.0

_address_option = click.option(
    "--address",
    default=None,
    help="The cluster's head, host:port (default: RAY_ADDRESS, else a `ray start` "
    "cluster on this machine).",
)


def register(main: click.Group) -> None:
    """Attach the ``cluster`` group to the CLI's top-level group."""
    main.add_command(cluster)


@click.group()
def cluster() -> None:
    """Run the resolute scheduler on a Ray cluster, inspect it, stop it."""


@contextmanager
def _connected(address: str | None) -> Iterator[str]:
    import ray

    from resolute.runtime.cluster import ClusterUnreachable, connect_driver
    from resolute.runtime.scheduler import NAMESPACE

    try:
        resolved = connect_driver(address, namespace=NAMESPACE)
    except ClusterUnreachable as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_NO_CLUSTER)
    try:
        yield resolved
    finally:
        ray.shutdown()


def _find_scheduler() -> Any | None:
    import ray

    from resolute.runtime.scheduler import NAMESPACE, SCHEDULER_NAME

    try:
        return ray.get_actor(SCHEDULER_NAME, namespace=NAMESPACE)
    except ValueError:
        return None


@cluster.command("up")
@_address_option
@click.option(
    "--journal-url",
    default=None,
    help="Where the scheduler keeps its journal, as an SQLAlchemy URL (default: "
    "RESOLUTE_JOURNAL_URL, else ~/.resolute/resolute.db, both as seen on the head node).",
)
@click.option(
    "--resize-cooldown",
    type=click.FloatRange(min=0),
    default=None,
    help="Seconds a trial waits after a resize before it is grown again (anti-thrash; "
    "default: RESOLUTE_RESIZE_COOLDOWN_S, else 10). Lent slots go back to a queued "
    "trial at once whatever this is.",
)
def up(address: str | None, journal_url: str | None, resize_cooldown: float | None) -> None:
    """Start the resolute scheduler on the cluster (detached, on the head node) and return."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from resolute.errors import SchedulerError
    from resolute.runtime.cluster import head_node_id
    from resolute.runtime.scheduler import NAMESPACE, SCHEDULER_NAME, Scheduler, resize_cooldown_s

    if resize_cooldown is None:
        try:
            resize_cooldown = resize_cooldown_s()
        except SchedulerError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
    with _connected(address) as resolved:
        existing = _find_scheduler()
        if existing is not None:
            click.echo(f"the resolute scheduler already runs on {resolved}")
            return
        options: dict[str, Any] = {
            "name": SCHEDULER_NAME,
            "namespace": NAMESPACE,
            "lifetime": "detached",
            "get_if_exists": True,
        }
        head = head_node_id()
        if head is not None:
            # Worker nodes come and go with the autoscaler; the control plane must not.
            options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(head, soft=False)
        scheduler = Scheduler.options(**options).remote(  # type: ignore[attr-defined]
            journal_url, cooldown_s=resize_cooldown
        )
        try:
            ray.get(scheduler.list.remote(), timeout=READY_TIMEOUT_S)
        except Exception as exc:
            click.echo(f"error: the scheduler did not start on {resolved}: {exc}", err=True)
            ray.kill(scheduler)
            sys.exit(1)
        where = journal_url or "the head node's RESOLUTE_JOURNAL_URL or ~/.resolute/resolute.db"
        click.echo(f"resolute scheduler running on {resolved} (journal: {where})")
        click.echo(
            f"submit with: RAY_ADDRESS={resolved} resolute experiment create EXP.yaml --detach"
        )


@cluster.command("status")
@_address_option
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def status(address: str | None, as_json: bool) -> None:
    """Nodes, slots, each experiment's slots and queue, and pending autoscaler requests."""
    with _connected(address) as resolved:
        snapshot = _snapshot()
        snapshot["address"] = resolved
        if as_json:
            click.echo(json.dumps(snapshot, indent=2, sort_keys=True, default=str))
        else:
            click.echo(render_status(snapshot))


def _snapshot() -> dict[str, Any]:
    """Nodes and the autoscaler's report, read here (every node Ray knows, dead ones too,
    with its role); experiments and pending requests from the scheduler's
    ``cluster_status()`` where one runs."""
    import ray

    from resolute.runtime.cluster import ClusterView

    data = ClusterView().status_snapshot()
    data["experiments"] = []
    scheduler = _find_scheduler()
    if scheduler is None:
        data["scheduler"] = "not running: start it with `resolute cluster up`"
        return data
    try:
        reported = dict(ray.get(scheduler.cluster_status.remote(), timeout=30))
    except AttributeError:  # a scheduler from before cluster_status existed
        data["scheduler"] = "running (too old to report experiments)"
        return data
    data["scheduler"] = "running"
    cooldown = reported.get("resize_cooldown_s")
    if cooldown is not None:
        data["scheduler"] = f"running (resize cool-down {_num(float(cooldown))} s)"
    data["experiments"] = list(reported.get("experiments") or [])
    data["pending_requests"] = list(reported.get("pending_requests") or [])
    return data


@cluster.command("down")
@_address_option
@click.option(
    "--timeout",
    default=SHUTDOWN_TIMEOUT_S,
    show_default=True,
    help="Seconds to wait for the scheduler to pause its experiments before removing it.",
)
def down(address: str | None, timeout: float) -> None:
    """Stop the scheduler: it pauses its active experiments (their running trials
    checkpoint), then it is removed. After the next `resolute cluster up`,
    `resolute experiment activate ID` resumes each. The Ray cluster itself keeps running."""
    import ray

    from resolute.runtime.cluster import withdraw_autoscaler_request

    with _connected(address) as resolved:
        scheduler = _find_scheduler()
        if scheduler is None:
            click.echo(f"no resolute scheduler runs on {resolved}; nothing to stop")
            withdraw_autoscaler_request()
            return
        try:
            active = [e for e in ray.get(scheduler.list.remote(), timeout=30) if not e.get("done")]
        except Exception:
            active = []
        if active:
            names = ", ".join(f"{e['id']} ({e['name']})" for e in active)
            click.echo(f"pausing {len(active)} active experiment(s): {names}")
        try:
            ray.get(scheduler.shutdown.remote(pause=True), timeout=timeout)
        except ray.exceptions.GetTimeoutError:
            click.echo(
                f"warning: the scheduler did not finish stopping in {timeout:g}s; removing it "
                "anyway (trials may not have checkpointed)",
                err=True,
            )
        except Exception as exc:  # a dead scheduler: remove what is left of it
            click.echo(f"warning: the scheduler failed while stopping: {exc}", err=True)
        ray.kill(scheduler, no_restart=True)
        # A request left in place would keep the autoscaler's nodes up forever.
        withdraw_autoscaler_request()
        click.echo(f"resolute scheduler stopped on {resolved}")
        if active:
            ids = " ".join(str(e["id"]) for e in active)
            click.echo(
                f"resume with `resolute cluster up`, then `resolute experiment activate ID` "
                f"for each of: {ids}"
            )


# -------------------------------------------------------------------- rendering
def slot_kind(nodes: Sequence[dict[str, Any]]) -> str:
    """What a slot is on this cluster: a GPU where any alive node has one, else a CPU."""
    alive = [n for n in nodes if n.get("alive", True)]
    return "GPU" if any(n["resources"].get("GPU", 0) > 0 for n in alive) else "CPU"


def short_ids(ids: Sequence[str], minimum: int = 8) -> dict[str, str]:
    """The shortest prefix (at least ``minimum`` characters) that tells the ids apart, or,
    where that is longer than 16, the shortest such suffix (the ids of the fake autoscaler's
    nodes share their first 51 characters)."""
    unique = set(ids)
    longest = max((len(i) for i in unique), default=minimum)
    for size in range(minimum, 17):
        if len({i[:size] for i in unique}) == len(unique):
            return {i: i[:size] for i in unique}
    for size in range(minimum, longest + 1):
        if len({i[-size:] for i in unique}) == len(unique):
            return {i: "..." + i[-size:] for i in unique}
    return {i: i for i in unique}


def _num(value: float) -> str:
    return f"{value:g}"


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return lines


def render_status(snapshot: dict[str, Any]) -> str:
    """The text ``resolute cluster status`` prints, from a ``cluster_status()`` dict."""
    from resolute.runtime.cluster import describe_bundles

    nodes = list(snapshot.get("nodes") or [])
    experiments = list(snapshot.get("experiments") or [])
    alive = [n for n in nodes if n.get("alive", True)]
    kind = slot_kind(nodes)
    total = sum(int(n["resources"].get(kind, 0) + 1e-9) for n in alive)
    used = sum(int(e.get("used_slots", 0)) for e in experiments)
    where = f" at {snapshot['address']}" if snapshot.get("address") else ""
    out = [
        f"cluster{where}: {len(alive)} node(s) alive, {total} {kind} slot(s), {used} in use "
        f"({100 * used / total:.0f}%)"
        if total
        else f"cluster{where}: {len(alive)} node(s) alive, no {kind} slots",
        f"scheduler: {snapshot.get('scheduler', 'running')}",
        "",
    ]
    names = short_ids([n["node_id"] for n in nodes])
    others = sorted({k for n in nodes for k in n["resources"] if k not in ("CPU", "GPU")})
    rows = []
    for n in sorted(nodes, key=lambda n: (not n.get("head", False), not n.get("alive", True))):
        res = n["resources"]
        extra = ", ".join(f"{k}: {_num(res[k])}" for k in others if k in res) or "-"
        rows.append(
            [
                names[n["node_id"]],
                n.get("address") or "-",
                "head" if n.get("head") else "worker",
                "alive" if n.get("alive", True) else "dead",
                _num(res.get("CPU", 0)),
                _num(res.get("GPU", 0)),
                extra,
            ]
        )
    out += _table(["NODE", "ADDRESS", "ROLE", "STATE", "CPU", "GPU", "OTHER"], rows) if rows else []
    out.append("")
    if experiments:
        out.append("experiments:")
        exp_rows = [
            [
                str(e.get("id", "-")),
                str(e.get("name", "-")),
                str(e.get("priority", "-")),
                _num(float(e.get("weight", 1.0))),
                str(e.get("used_slots", 0)),
                str(e.get("running_trials", 0)),
                str(e.get("queued_trials", 0)),
            ]
            for e in sorted(experiments, key=lambda e: (e.get("priority", 0), e.get("id", 0)))
        ]
        out += _table(["ID", "NAME", "PRIORITY", "WEIGHT", "SLOTS", "RUNNING", "QUEUED"], exp_rows)
    else:
        out.append("experiments: none")
    out.append("")
    pending = list(snapshot.get("pending_requests") or [])
    out.append(f"pending autoscaler requests: {describe_bundles(pending)}")
    report = snapshot.get("autoscaler") or {}
    target = [dict(r["bundle"]) for r in report.get("requested") or [] for _ in range(r["count"])]
    if target:
        # What request_resources() holds now: what is in use plus what is pending.
        out.append(f"autoscaler target: {describe_bundles(target)}")
    launching = report.get("pending_launches") or {}
    if launching:
        out.append(
            "autoscaler launching: " + ", ".join(f"{n} x {t}" for t, n in sorted(launching.items()))
        )
    failed = report.get("failed_nodes") or []
    if failed:
        out.append(f"autoscaler failed nodes: {len(failed)} (see `ray status` on the head)")
    return "\n".join(out)
