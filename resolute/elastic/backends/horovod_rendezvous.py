"""The rendezvous half of the Horovod backend: the Gloo rendezvous HTTP server that rank 0
runs (Horovod's own ``RendezvousServer``), where this node is reachable, and the arrival
barrier that also works out each rank's cross-node placement.

Only ``horovod.runner`` (pure Python) is used here; the compiled ``horovod.torch`` is not.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
from typing import Any

from resolute.elastic.backends.base import WorldInfo
from resolute.errors import HorovodError

# One rendezvous server per process, shared by every generation and every trial this worker
# runs: its serving thread would otherwise outlive each backend object (one leaked thread
# and port per trial on a reused worker). Cleared per generation by rendezvous_info.
_server_lock = threading.Lock()
_server: Any = None  # horovod.runner.http.http_server.RendezvousServer
_server_port: int | None = None


def rendezvous_server(verbose: bool) -> tuple[Any, int]:
    global _server, _server_port
    with _server_lock:
        if _server is None:
            from horovod.runner.http.http_server import RendezvousServer

            server = RendezvousServer(verbose=int(verbose))
            _server_port = int(server.start())
            _server = server
        assert _server_port is not None
        return _server, _server_port


def stop_rendezvous_server() -> None:
    """Stop this process's rendezvous server, if it runs (a worker being retired)."""
    global _server, _server_port
    with _server_lock:
        if _server is not None:
            _server.stop()
        _server, _server_port = None, None


def node_ip() -> str:
    """The address other nodes reach this one at: Ray's view when inside Ray."""
    try:
        import ray

        if ray.is_initialized():
            return str(ray.util.get_node_ip_address())  # type: ignore[no-untyped-call]
    except ImportError:
        pass
    # Outside Ray: the address of the interface that routes outward (no packet is sent).
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("10.255.255.255", 1))
            return str(probe.getsockname()[0])
        except OSError:
            return "127.0.0.1"


def iface_for(ip: str) -> str | None:
    """The network interface holding ``ip``. Gloo otherwise binds to whatever the hostname
    resolves to, which in containers is often a loopback address other nodes cannot reach."""
    import psutil

    for name, addrs in psutil.net_if_addrs().items():
        if any(a.family == socket.AF_INET and a.address == ip for a in addrs):
            return str(name)
    return None


class KVClient:
    """Minimal client of the rendezvous server's key-value scopes (raw bytes, JSON)."""

    def __init__(self, addr: str, port: int) -> None:
        self._base = f"http://{addr}:{port}"

    def put(self, scope: str, key: str, value: Any) -> None:
        req = urllib.request.Request(
            f"{self._base}/{scope}/{key}", data=json.dumps(value).encode(), method="PUT"
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            resp.read()

    def wait_get(self, scope: str, key: str, *, deadline: float) -> Any:
        delay = 0.005
        while True:
            try:
                with urllib.request.urlopen(f"{self._base}/{scope}/{key}", timeout=10) as resp:
                    return json.loads(resp.read())
            except urllib.error.HTTPError as exc:
                if exc.code != 404:
                    raise
            if time.monotonic() > deadline:
                raise HorovodError(
                    f"Horovod rendezvous timed out waiting for rank {key} in scope {scope}; "
                    f"a rank did not start or cannot reach {self._base}: check that the "
                    f"nodes can reach each other on that port, or raise the group timeout"
                )
            time.sleep(delay)
            # The server cannot long-poll; ranks of a re-formation arrive within tens of ms
            # of each other, so a short cap keeps the wait close to the last arrival.
            delay = min(delay * 2, 0.02)


def gather_layout(world: WorldInfo, kv: KVClient) -> tuple[int, int]:
    """Wait until every rank of ``world`` has arrived; return this rank's
    (cross_rank, cross_size): its index among the ranks sharing its local_rank across nodes
    (nodes may hold different numbers of ranks, so it takes everyone's placement).

    Arrival is awaited here, under ``world.timeout_s``, rather than inside ``hvd.init``:
    Horovod's one Gloo timeout bounds both its rendezvous and every later collective, and
    it should be short so that a dead peer is noticed quickly. Rank 0 gathers and publishes
    the layout, so the server sees O(world_size) requests, not O(world_size^2)."""
    scope = f"resolute_g{world.generation}"
    kv.put(scope, str(world.rank), [world.node_rank, world.local_rank])
    deadline = time.monotonic() + world.timeout_s
    if world.rank == 0:
        layout = [kv.wait_get(scope, str(r), deadline=deadline) for r in range(world.world_size)]
        kv.put(scope, "layout", layout)
    else:
        layout = kv.wait_get(scope, "layout", deadline=deadline)
    if len(layout) != world.world_size:
        raise HorovodError(
            f"rendezvous layout has {len(layout)} ranks, expected {world.world_size}: two "
            f"groups share generation {world.generation} on one server; re-form the group"
        )
    peers = sorted(node for node, local in layout if local == world.local_rank)
    return peers.index(world.node_rank), len(peers)
