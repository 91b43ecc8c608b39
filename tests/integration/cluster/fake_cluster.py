"""A real Ray head with the autoscaler (v1) and its ``fake_multinode`` node provider: worker
"nodes" are extra raylets started on this machine, launched and terminated by the real
autoscaler in answer to real demand (``request_resources``, pending placement groups).

Every cluster gets its own ports, its own short ``RAY_TMPDIR`` and its own process group:
``ray start --head --block`` runs as the leader of a new session, the autoscaler's monitor
starts the fake nodes as its children, so they all share that group. Teardown signals that
group only (never ``ray stop``, which would end every Ray on the machine).

Token authentication: Ray 2.60 turns it on for ``ray start`` when ``~/.ray/auth_token``
exists, but a driver that names an address does not turn it on by itself. The cluster runs
with ``RAY_AUTH_MODE=token`` and the default token file (created if missing, as an embedded
``ray.init()`` does), so a driver in the same process, before or after an embedded session,
presents the same token; :meth:`FakeAutoscalingCluster.driver_env` is what a driver needs.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

HEAD_TYPE = "ray.head.default"
START_TIMEOUT_S = 120.0
START_ATTEMPTS = 2
STOP_GRACE_S = 10.0


@dataclass(frozen=True)
class WorkerType:
    """One autoscaler node type: what each node of it offers and how many may exist."""

    resources: Mapping[str, float]
    max_workers: int = 2
    min_workers: int = 0


DEFAULT_WORKER_TYPES: dict[str, WorkerType] = {
    # "slot" stands in for a GPU: a resource only worker nodes have, so demand for it can
    # only be met by the autoscaler adding nodes.
    "ray.worker.slot": WorkerType(resources={"CPU": 1, "slot": 1}, max_workers=2),
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


def node_ip() -> str:
    import ray._private.services as services

    return str(services.get_node_ip_address())


@dataclass
class FakeAutoscalingCluster:
    """Start with :meth:`start`, connect a driver with :meth:`connect`, end with :meth:`stop`.

    ``idle_timeout_s``: how long a worker node may sit idle before the autoscaler removes it
    (the autoscaler checks every second here, so removal follows within a few seconds)."""

    head_resources: Mapping[str, float] = field(default_factory=lambda: {"CPU": 1})
    worker_types: Mapping[str, WorkerType] = field(
        default_factory=lambda: dict(DEFAULT_WORKER_TYPES)
    )
    max_workers: int = 2
    idle_timeout_s: float = 6.0
    auth_mode: str = "token"  # RAY_AUTH_MODE of the head: "token" or "disabled"
    root: Path | None = None

    address: str = field(init=False, default="")
    _proc: subprocess.Popen[bytes] | None = field(init=False, default=None)
    _own_root: bool = field(init=False, default=False)

    # ------------------------------------------------------------------ config
    def autoscaling_config(self, gcs_address: str) -> dict[str, Any]:
        types: dict[str, Any] = {
            name: {
                "resources": {**t.resources, "object_store_memory": 100 * 1024**2},
                "node_config": {},
                "min_workers": t.min_workers,
                "max_workers": t.max_workers,
            }
            for name, t in self.worker_types.items()
        }
        types[HEAD_TYPE] = {"resources": dict(self.head_resources), "node_config": {}}
        types[HEAD_TYPE]["max_workers"] = 0
        return {
            "cluster_name": "resolute-fake",
            "max_workers": self.max_workers,
            "provider": {
                "type": "fake_multinode",
                "use_node_id_as_ip": True,
                "disable_node_updaters": True,
                "disable_launch_config_check": True,
                # Where the fake nodes join: our head, not the default port 6379.
                "gcs_address": gcs_address,
            },
            "available_node_types": types,
            "head_node_type": HEAD_TYPE,
            "auth": {},
            "upscaling_speed": 1.0,
            "idle_timeout_minutes": self.idle_timeout_s / 60.0,
            "docker": {},
            "initialization_commands": [],
            "setup_commands": [],
            "head_setup_commands": [],
            "worker_setup_commands": [],
            "head_start_ray_commands": [],
            "worker_start_ray_commands": [],
            "file_mounts": {},
            "cluster_synced_files": [],
            "file_mounts_sync_continuously": False,
            "rsync_exclude": [],
            "rsync_filter": [],
        }

    def driver_env(self) -> dict[str, str]:
        """Environment a driver (or a ``resolute`` subprocess) needs to join this cluster."""
        assert self.root is not None, "start() the cluster first"
        return {
            "RAY_ADDRESS": self.address,
            "RAY_AUTH_MODE": self.auth_mode,
            "RAY_TMPDIR": str(self.root / "t"),
        }

    # ------------------------------------------------------------------ lifecycle
    def start(self, timeout_s: float = START_TIMEOUT_S) -> FakeAutoscalingCluster:
        if self.root is None:
            # AF_UNIX socket paths must stay short: a short folder directly under /tmp.
            self.root = Path(tempfile.mkdtemp(prefix="rfc-", dir="/tmp"))
            self._own_root = True
        ensure_default_token()
        for attempt in range(1, START_ATTEMPTS + 1):
            try:
                self._start_head(timeout_s)
                return self
            except HeadExited:
                # Ray gives a head 30 s to register with its own GCS; a machine busy with
                # other test sessions can miss that. Once more, on fresh ports.
                self._kill_group()
                if attempt == START_ATTEMPTS:
                    self.stop()
                    raise
            except BaseException:
                self.stop()
                raise
        raise AssertionError("unreachable")

    def _start_head(self, timeout_s: float) -> None:
        assert self.root is not None
        port = free_port()
        self.address = f"{node_ip()}:{port}"
        config_path = self.root / "autoscaling.yaml"
        config_path.write_text(yaml.safe_dump(self.autoscaling_config(self.address)))
        head = dict(self.head_resources)
        cmd = [
            sys.executable,
            "-m",
            "ray.scripts.scripts",
            "start",
            "--head",
            "--block",
            "--disable-usage-stats",
            "--include-dashboard=false",
            f"--port={port}",
            f"--autoscaling-config={config_path}",
            f"--num-cpus={int(head.pop('CPU', 0))}",
            f"--num-gpus={int(head.pop('GPU', 0))}",
            "--object-store-memory=100000000",
            *_port_flags(),
        ]
        if head:
            cmd.append(f"--resources={json.dumps(head)}")
        env = dict(os.environ)
        env.update(
            RAY_FAKE_CLUSTER="1",
            AUTOSCALER_UPDATE_INTERVAL_S="1",
            RAY_AUTH_MODE=self.auth_mode,
            RAY_TMPDIR=str(self.root / "t"),
        )
        env.pop("RAY_ADDRESS", None)
        log = open(self.root / "ray-start.log", "wb")  # noqa: SIM115 - the child keeps it
        self._proc = subprocess.Popen(
            cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        self._wait_until_up(timeout_s)

    def _wait_until_up(self, timeout_s: float) -> None:
        assert self._proc is not None and self.root is not None
        marker = b"--block"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise HeadExited(
                    f"`ray start --head` exited with {self._proc.returncode}:\n{self.log_tail()}"
                )
            if marker in (self.root / "ray-start.log").read_bytes():
                return
            time.sleep(0.5)
        raise TimeoutError(f"the Ray head did not start in {timeout_s:g}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        assert self.root is not None
        path = self.root / "ray-start.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def connect(self, **init_kwargs: Any) -> Any:
        """``ray.init`` this process to the cluster."""
        import ray

        # Always token mode: a token sent to a head without authentication is ignored.
        # Ray reads the mode once per process, so set it the way Ray itself does.
        from ray._private.authentication.authentication_token_setup import _enable_token_auth

        _enable_token_auth()
        init_kwargs.setdefault("logging_level", "WARNING")
        return ray.init(address=self.address, **init_kwargs)

    def pids(self) -> list[int]:
        """The live processes of this cluster: its process group."""
        if self._proc is None:
            return []
        import psutil

        pgid = self._proc.pid
        found = []
        for proc in psutil.process_iter(["pid"]):
            with contextlib.suppress(ProcessLookupError, psutil.Error, OSError):
                if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                    found.append(proc.pid)
        return found

    def stop(self) -> None:
        """End the head, the autoscaler and every fake node: the head's process group.

        SIGTERM to ``ray start`` first (it drains and stops its children), then SIGKILL to
        whatever of the group is left after a grace period."""
        self._kill_group()
        if self._own_root and self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)

    def _kill_group(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(STOP_GRACE_S)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)


class HeadExited(RuntimeError):
    """``ray start --head`` ended before the head was up."""


def ensure_default_token() -> None:
    """Create ``~/.ray/auth_token`` if missing (what an embedded ``ray.init()`` does)."""
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    if not path.exists() and not os.environ.get("RAY_AUTH_TOKEN"):
        import secrets

        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_hex(32))
        path.chmod(0o600)


def _port_flags() -> list[str]:
    # Every fixed-default port of a head gets a free one, so that clusters of parallel test
    # sessions (and a developer's own `ray start`) never collide.
    names = (
        "node-manager-port",
        "object-manager-port",
        "ray-client-server-port",
        "dashboard-port",
        "dashboard-agent-listen-port",
        "dashboard-agent-grpc-port",
        "metrics-export-port",
        "runtime-env-agent-port",
    )
    return [f"--{name}={free_port()}" for name in names]


def wait_for(
    predicate: Callable[[], bool], timeout_s: float, what: str, poll_s: float = 0.5
) -> float:
    """Poll ``predicate`` until it holds; returns the seconds it took. Raises after
    ``timeout_s`` with ``what`` in the message."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout_s:
            raise TimeoutError(f"{what}: not after {timeout_s:g}s")
        time.sleep(poll_s)
    return time.monotonic() - start
