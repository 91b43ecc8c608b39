"""Shipping an experiment's code to the cluster as a Ray package, and keeping it there.

**Upload (driver side).** Only the process that submits can read the user's files, so
``client.submit`` packs ``context_dir`` into a zip the way Ray packs a ``working_dir`` (its
default excludes, ``.gitignore`` and ``.rayignore``, plus ``environment.excludes`` and
``.git``), stores it in the cluster's GCS under its content hash
(``gcs://_ray_pkg_<sha1>.zip``) and submits the config with ``environment.package`` set to
that URI. Trial workers are then created with ``runtime_env={"working_dir": uri, ...}``.

**Keeping it (cluster side).** GCS deletes a ``gcs://`` package as soon as nothing
references it. The upload pins it for ``RAY_RUNTIME_ENV_TEMPORARY_REFERENCE_EXPIRATION_S``
(10 minutes by default), a job references its own runtime_env until it ends, and a
*detached* actor references its runtime_env until it is destroyed (GCS
``RuntimeEnvManager``: ``AddURIReference`` on registering a detached actor, removal on its
death). The CLI's job ends when it exits, and worker actors are not detached, so neither
keeps the package while an experiment waits hours in a queue or is paused. The scheduler
therefore starts, per experiment, a small detached :class:`PackageHolder` created with the
package as its working_dir: it holds the reference, and ends itself once the scheduler
reports the experiment over (ended, or not in its journal), releasing the package for
collection. An experiment a gone scheduler left PAUSED or ACTIVE is not over: a new
scheduler adopts it on ``activate`` (``runtime/recovery.py``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from resolute.errors import RuntimeEnvError

if TYPE_CHECKING:
    from resolute.config import ExperimentConfig

log = logging.getLogger("resolute.package")

HOLDER_PREFIX = "package/"
POLL_S = 60.0  # how long each of the holder's waits on the scheduler lasts
SCHEDULER_RETRY_S = 10.0  # how often a holder looks for a scheduler that is not there


def upload_context(config: ExperimentConfig, *, max_bytes: int | None = None) -> ExperimentConfig:
    """Upload ``config.context_dir`` to the connected cluster (``ray.init`` done) unless
    ``environment.package`` is set already; returns the config with the package's URI.

    ``max_bytes``: the largest package accepted (default: Ray's limit, the GCS's largest
    message). Raises ``RuntimeEnvError`` saying what to exclude when it is larger."""
    if config.environment.package is not None:
        return config
    from ray._private import ray_constants
    from ray._private.runtime_env import packaging

    directory = Path(config.context_dir)
    if not directory.is_dir():
        raise RuntimeEnvError(
            f"context_dir {str(directory)!r} is not a folder on this machine; point "
            "context_dir at the folder that holds the training code"
        )
    include_gitignore = os.environ.get(ray_constants.RAY_RUNTIME_ENV_IGNORE_GITIGNORE, "0") != "1"
    excludes = [
        *ray_constants.get_runtime_env_default_excludes(),
        *config.runtime_env()["excludes"],
    ]
    uri = packaging.get_uri_for_directory(
        str(directory), include_gitignore=include_gitignore, excludes=excludes
    )
    # Pinned before the check: a package that exists now must still exist when the
    # scheduler's holder takes its reference (seconds later).
    packaging.pin_runtime_env_uri(uri)
    if packaging.package_exists(uri):
        log.info("context_dir %s is on the cluster already as %s", directory, uri)
        return config.with_package(uri)
    limit = packaging.GCS_STORAGE_MAX_SIZE if max_bytes is None else max_bytes
    with tempfile.TemporaryDirectory(prefix="resolute-package-") as scratch:
        zipped = Path(scratch) / "context.zip"
        packaging.create_package(
            str(directory), zipped, include_gitignore=include_gitignore, excludes=excludes
        )
        size = zipped.stat().st_size
        if size >= limit:
            raise RuntimeEnvError(
                f"context_dir {str(directory)!r} packs to {_mib(size)}, more than the "
                f"{_mib(limit)} a Ray cluster accepts: list data, checkpoints, virtualenvs "
                "and other large files in environment.excludes (or a .gitignore / "
                ".rayignore in context_dir), or host the code as a zip and set "
                "environment.package to its URI (s3://, gs://, https://)"
            )
        try:
            packaging.upload_package_to_gcs(uri, zipped.read_bytes())
        except (RuntimeError, ValueError) as exc:
            raise RuntimeEnvError(
                f"uploading context_dir {str(directory)!r} ({_mib(size)}) to the cluster "
                f"failed: {exc}. Check the connection to the cluster and retry"
            ) from exc
    log.info("uploaded context_dir %s (%s) as %s", directory, _mib(size), uri)
    return config.with_package(uri)


def _mib(n: int) -> str:
    return f"{n / 2**20:.2f} MiB"


def holder_name(experiment_id: int) -> str:
    return f"{HOLDER_PREFIX}{experiment_id}"


def hold_package(experiment_id: int, config: ExperimentConfig) -> Any | None:
    """Start the detached holder that keeps the experiment's ``gcs://`` package in GCS until
    the experiment ends; returns its handle (None when there is nothing to hold: the code is
    read from context_dir, or the package is hosted outside the cluster). Call from the
    scheduler right after the experiment is registered, while the uploader's pin lasts."""
    uri = config.environment.package
    if uri is None or not uri.startswith("gcs://"):
        return None

    from resolute.runtime.cluster import head_node_id
    from resolute.runtime.scheduler import NAMESPACE

    options: dict[str, Any] = {
        "name": holder_name(experiment_id),
        "namespace": NAMESPACE,
        "lifetime": "detached",
        "get_if_exists": True,
        "num_cpus": 0,
        # The reference lives as long as the actor is not destroyed; a restart keeps it.
        "max_restarts": -1,
        "runtime_env": {"working_dir": uri},
    }
    head = head_node_id()
    if head is not None:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        # Worker nodes leave with the autoscaler; a holder there would die with its node.
        options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(head, soft=True)
    holder = holder_actor_class().options(**options).remote(experiment_id, uri)
    holder.watch.remote()
    return holder


class PackageHolder:
    """A detached actor whose only job is to exist: its runtime_env names the package, so GCS
    keeps the package while it lives. It waits on the scheduler and exits when its
    experiment is over: ended, or not in the scheduler's journal (a scheduler that is gone,
    e.g. between ``resolute cluster down`` and ``up``, is waited for)."""

    def __init__(self, experiment_id: int, uri: str) -> None:
        self.experiment_id = experiment_id
        self.uri = uri
        self._watching = False

    def info(self) -> dict[str, Any]:
        return {"experiment_id": self.experiment_id, "uri": self.uri, "cwd": os.getcwd()}

    async def watch(self) -> None:
        if self._watching:
            return
        self._watching = True
        while not await self._experiment_over():
            pass
        log.info("experiment %s is over; releasing %s", self.experiment_id, self.uri)
        import ray

        ray.actor.exit_actor()  # type: ignore[no-untyped-call]

    async def _experiment_over(self) -> bool:
        import ray

        from resolute.runtime.scheduler import NAMESPACE, SCHEDULER_NAME

        try:
            scheduler = ray.get_actor(SCHEDULER_NAME, namespace=NAMESPACE)
            # Not over while it is in the scheduler's journal waiting to be adopted.
            return bool(await scheduler.experiment_over.remote(self.experiment_id, POLL_S))
        except ray.exceptions.RayTaskError as exc:
            log.warning("asking the scheduler about experiment %s: %s", self.experiment_id, exc)
        except (ValueError, ray.exceptions.RayActorError):
            pass  # no scheduler now; one started later takes the experiment back
        await asyncio.sleep(SCHEDULER_RETRY_S)
        return False


def holder_actor_class() -> Any:
    import ray

    global _holder_class
    if _holder_class is None:
        _holder_class = ray.remote(PackageHolder)
    return _holder_class


_holder_class: Any = None
