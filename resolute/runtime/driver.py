"""Joining a running Ray cluster as a driver: finding its address, token authentication,
and a clear error when nothing answers. Used by the CLI and ``runtime/client.py``."""

from __future__ import annotations

import logging
import os
import socket


class ClusterUnreachable(ConnectionError):
    """No Ray cluster answers at the address given."""


def enable_token_auth_if_available() -> bool:
    """Turn token authentication on for this process when a token is at hand.

    Ray 2.60 runs ``ray start --head`` with token auth when ``~/.ray/auth_token`` exists
    (and every embedded ``ray.init()`` creates that file), and ``ray.init("auto")`` turns
    it on for the driver, but ``ray.init(address=...)`` with an explicit address does not:
    such a driver is refused after a long wait. Do what ``"auto"`` does: token mode when
    ``RAY_AUTH_MODE`` is unset and a token exists. A token sent to a cluster that has
    authentication off is ignored, so this is safe either way. Call before ``ray.init``."""
    if os.environ.get("RAY_AUTH_MODE") is not None:
        return os.environ["RAY_AUTH_MODE"].lower() == "token"
    try:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )
    except ImportError:  # a Ray without token authentication
        return False
    return bool(maybe_enable_token_auth_if_token_available(warn_if_disabled=False))


def resolve_address(address: str | None) -> str:
    """The cluster address to join: ``address``, else ``RAY_ADDRESS``, else ``"auto"`` (a
    cluster started with ``ray start`` on this machine). Raises ClusterUnreachable when
    nothing answers there, quickly (Ray itself waits a minute before giving up)."""
    address = address or os.environ.get("RAY_ADDRESS") or "auto"
    if address.startswith(("ray://", "http://", "https://")):
        return address  # Ray Client or a job server: Ray checks these itself
    if address == "auto":
        found = _local_cluster_address()
        if found is None:
            raise ClusterUnreachable(
                "no Ray cluster found on this machine: start one with `ray start --head` "
                "or set RAY_ADDRESS (or pass --address) to a running cluster's head"
            )
        return found
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ClusterUnreachable(
            f"Ray cluster address {address!r} is not host:port (e.g. 10.0.0.5:6379): "
            "set RAY_ADDRESS or --address to the head's GCS address"
        )
    try:
        with socket.create_connection((host, int(port)), timeout=3.0):
            pass
    except OSError as exc:
        raise ClusterUnreachable(
            f"no Ray cluster at {address} ({exc.strerror or exc}): start one with "
            "`ray start --head` or set RAY_ADDRESS to a running cluster's head"
        ) from exc
    return address


def _local_cluster_address() -> str | None:
    """The address the last ``ray start`` on this machine recorded (in ``RAY_TMPDIR``,
    default /tmp/ray), if its head still answers."""
    from ray._private.utils import read_ray_address

    address = read_ray_address(None)
    if not address:
        return None
    host, _, port = address.strip().rpartition(":")
    if not host or not port.isdigit():
        return None
    try:
        with socket.create_connection((host, int(port)), timeout=3.0):
            return address.strip()
    except OSError:
        return None


def connect_driver(address: str | None, *, namespace: str) -> str:
    """``ray.init`` this process to a running cluster (never starting one). Returns the
    address joined; raises ClusterUnreachable with what to do."""
    import ray

    resolved = resolve_address(address)
    if ray.is_initialized():
        return resolved
    enable_token_auth_if_available()
    try:
        # The scheduler's and trials' logs stay on the cluster: a CLI call is short.
        ray.init(
            address=resolved,
            namespace=namespace,
            logging_level=logging.WARNING,
            log_to_driver=False,
        )
    except ConnectionError as exc:
        raise ClusterUnreachable(
            f"no Ray cluster at {resolved} answered ({exc}): start one with "
            "`ray start --head` or set RAY_ADDRESS; if the cluster uses token "
            "authentication, set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN (or copy its "
            "~/.ray/auth_token)"
        ) from exc
    return resolved
