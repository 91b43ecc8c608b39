"""The experiment's code and ``environment`` reach the trials through Ray's runtime_env, on a
real Ray cluster (``ray start --head``): context_dir is uploaded to the cluster's GCS at
submit, the workers import from that package (not from the submitting machine's disk),
``environment.env_vars`` are in the worker processes from their start, warm workers are never
shared between experiments with different code, and the package outlives the CLI that
uploaded it until its experiment ends."""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from resolute.config import load_config
from resolute.errors import RuntimeEnvError
from resolute.runtime import client
from resolute.runtime.journal import Journal
from resolute.runtime.package import holder_name, upload_context

from .cluster.fake_cluster import FakeAutoscalingCluster, wait_for

pytestmark = pytest.mark.integration

RESOLUTE = [sys.executable, "-m", "resolute.cli"]
PIN_ENV = "RAY_RUNTIME_ENV_TEMPORARY_REFERENCE_EXPIRATION_S"

TRAIN = """\
import os
import time

MARK_AT_IMPORT = os.environ.get("RESOLUTE_TEST_MARK")
OFFSET = {offset}


def train(ctx):
    here = os.path.dirname(os.path.realpath(__file__))
    if here != os.path.realpath(os.getcwd()):
        raise RuntimeError(f"imported from {{here}}, not from the package at {{os.getcwd()}}")
    step = 0
    while not ctx.should_stop():
        step += 1
        mark = float(MARK_AT_IMPORT) if MARK_AT_IMPORT is not None else -1.0
        ctx.report(step, {{"pid": os.getpid() + OFFSET, "mark": mark}})
        time.sleep(0.02)
"""


def write_code(folder: Path, *, offset: float = 0.0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pkgfn.py").write_text(TRAIN.format(offset=offset))
    return folder


def write_config(tmp_path: Path, name: str, context: Path, **overrides: Any) -> Path:
    data: dict[str, Any] = {
        "name": name,
        "entrypoint": "pkgfn:train",
        "context_dir": str(context),
        "storage": str(tmp_path / "storage"),
        "seed": 3,
        "hyperparameters": {"x": 0.5},
        "searcher": {"name": "random", "metric": "pid", "max_trials": 1, "max_time": 3},
        "max_restarts": 0,
    }
    data.update(overrides)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    import ray

    if ray.is_initialized():
        ray.shutdown()
    home = tmp_path_factory.mktemp("home")
    # 3 slots: a long experiment, an idle warm worker and a new one side by side.
    head = FakeAutoscalingCluster(head_resources={"CPU": 3}, worker_types={}, max_workers=0)
    head.start()
    try:
        head.connect(namespace="resolute-test")
        conn = client.connect(head.address, journal_url=f"sqlite:///{home / 'resolute.db'}")
        yield head, conn, home
    finally:
        if ray.is_initialized():
            ray.shutdown()
        head.stop()


def run(conn: client.Connection, path: Path) -> tuple[int, dict[str, Any]]:
    exp_id = client.submit(conn, load_config(path))
    with open(os.devnull, "w") as out:
        summary = client.follow(conn, exp_id, out=out, poll_s=0.5)
    return exp_id, summary


def trial_pids(home: Path, exp_id: int) -> list[float]:
    """Each trial's best searcher metric: its worker's pid (+ the code's offset)."""
    journal = Journal(f"sqlite:///{home / 'resolute.db'}")
    return [t.best_metric for t in journal.list_trials(exp_id)]


trial_marks = trial_pids  # the same column, for experiments whose metric is the mark


def kv_exists(uri: str) -> bool:
    from ray.experimental.internal_kv import _internal_kv_exists

    return bool(_internal_kv_exists(uri))


def test_code_comes_from_the_package_and_env_vars_from_process_start(cluster, tmp_path):
    _, conn, home = cluster
    context = write_code(tmp_path / "code")
    (context / "big.bin").write_bytes(os.urandom(4096))
    path = write_config(
        tmp_path,
        "moved",
        context,
        environment={"env_vars": {"RESOLUTE_TEST_MARK": "7"}, "excludes": ["big.bin"]},
        searcher={"name": "random", "metric": "mark", "max_trials": 1, "max_time": 3},
    )
    config = load_config(path)
    exp_id = client.submit(conn, config)
    # The driver's copy goes away at once: the trial can only run from the package.
    context.rename(tmp_path / "code-moved")
    with open(os.devnull, "w") as out:
        summary = client.follow(conn, exp_id, out=out, poll_s=0.5)
    assert summary["status"] == "COMPLETED", summary
    # The variable was there when the module was imported (process start), not only during
    # the trial: it came through the runtime_env.
    assert summary["best_metric"] == 7.0
    stored = Journal(f"sqlite:///{home / 'resolute.db'}").get_experiment(exp_id)
    uri = yaml.safe_load(stored.config_yaml)["environment"]["package"]
    assert re.fullmatch(r"gcs://_ray_pkg_[0-9a-f]+\.zip", uri), uri
    from ray.experimental.internal_kv import _internal_kv_get

    names = zipfile.ZipFile(io.BytesIO(_internal_kv_get(uri))).namelist()
    assert "pkgfn.py" in names and "big.bin" not in names  # environment.excludes honoured


def test_experiments_with_different_code_never_share_warm_workers(cluster, tmp_path):
    _, conn, home = cluster
    code_a = write_code(tmp_path / "a", offset=0.0)
    code_b = write_code(tmp_path / "b", offset=0.5)  # same module name, other code
    # The scheduler lets idle workers go once no experiment is left: one runs throughout.
    keeper = client.submit(
        conn,
        load_config(
            write_config(
                tmp_path,
                "keeper",
                write_code(tmp_path / "k", offset=0.75),
                searcher={"name": "random", "metric": "pid", "max_trials": 1, "max_time": 10**6},
            )
        ),
    )
    try:
        first, s1 = run(conn, write_config(tmp_path, "a1", code_a))
        other, s2 = run(conn, write_config(tmp_path, "b1", code_b))
        again, s3 = run(conn, write_config(tmp_path, "a2", code_a))
    finally:
        client.kill(conn, keeper)
    assert [s["status"] for s in (s1, s2, s3)] == ["COMPLETED"] * 3
    (pid_a,), (pid_b,), (pid_a2,) = (trial_pids(home, e) for e in (first, other, again))
    assert pid_b % 1 == 0.5  # B's own code ran ...
    assert int(pid_b) != int(pid_a)  # ... on a worker of its own
    assert pid_a2 == pid_a  # while the same code does reuse its warm worker


def test_too_large_a_context_dir_is_a_clear_error(cluster, tmp_path):
    context = write_code(tmp_path / "big")
    (context / "data.bin").write_bytes(os.urandom(64 * 1024))
    config = load_config(write_config(tmp_path, "big", context))
    with pytest.raises(RuntimeEnvError, match="environment.excludes"):
        upload_context(config, max_bytes=32 * 1024)
    excluded = load_config(
        write_config(tmp_path, "big", context, environment={"excludes": ["*.bin"]})
    )
    assert upload_context(excluded, max_bytes=32 * 1024).environment.package is not None


def test_package_outlives_the_cli_until_the_experiment_ends(cluster, tmp_path):
    import ray
    from ray._private.runtime_env import packaging

    head, conn, home = cluster
    # Code of its own: a package this module's other tests uploaded from this process is
    # pinned for Ray's default 10 minutes.
    context = write_code(tmp_path / "code", offset=0.125)
    path = write_config(
        tmp_path,
        "outlives",
        context,
        # One trial at a time, each on a fresh worker: trials start long after the CLI left.
        resources={"cpus_per_slot": 3, "reuse_workers": False},
        searcher={"name": "random", "metric": "pid", "max_trials": 3, "max_time": 60},
    )
    env = {
        **os.environ,
        **head.driver_env(),
        "RESOLUTE_HOME": str(home),
        PIN_ENV: "2",  # the uploader's temporary reference lasts 2 s
    }
    created = subprocess.run(
        [*RESOLUTE, "experiment", "create", str(path), "--detach"],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert created.returncode == 0, created.stdout + created.stderr
    exp_id = int(re.search(r"experiment (\d+) submitted", created.stdout).group(1))
    shutil.rmtree(context)
    stored = Journal(f"sqlite:///{home / 'resolute.db'}").get_experiment(exp_id)
    uri = yaml.safe_load(stored.config_yaml)["environment"]["package"]

    # Control: a package with only the uploader's 2 s reference is collected ...
    control = write_code(tmp_path / "control", offset=0.25)
    os.environ[PIN_ENV] = "2"
    try:
        loose = upload_context(load_config(write_config(tmp_path, "control", control)))
    finally:
        del os.environ[PIN_ENV]
    loose_uri = loose.environment.package
    wait_for(lambda: not kv_exists(loose_uri), 30, "an unreferenced package is collected")
    # ... while the experiment's package stays, its CLI long gone.
    assert kv_exists(uri)
    assert packaging.package_exists(uri)

    with open(os.devnull, "w") as out:
        summary = client.follow(conn, exp_id, out=out, poll_s=0.5)
    assert summary["status"] == "COMPLETED", summary
    pids = trial_pids(home, exp_id)
    assert len(pids) == 3 and len(set(pids)) == 3  # three workers, started one after another
    # The experiment is over: its holder leaves and the package is released.
    wait_for(lambda: not kv_exists(uri), 120, "the package is released after the experiment")
    with pytest.raises(ValueError):
        ray.get_actor(holder_name(exp_id), namespace="resolute")


def test_cli_submission_from_a_job_style_working_dir(cluster, tmp_path):
    """What ``ray job submit --working-dir . -- resolute experiment create exp.yaml`` runs: the
    CLI in a folder holding the code, with a relative context_dir; it uploads that folder."""
    head, _, home = cluster
    folder = write_code(tmp_path / "job")
    (folder / "exp.yaml").write_text(
        textwrap.dedent(
            f"""\
            name: jobstyle
            entrypoint: pkgfn:train
            storage: {tmp_path / "storage"}
            hyperparameters: {{x: 0.5}}
            searcher: {{name: random, metric: mark, max_trials: 1, max_time: 3}}
            environment: {{env_vars: {{RESOLUTE_TEST_MARK: "3"}}}}
            """
        )
    )
    env = {**os.environ, **head.driver_env(), "RESOLUTE_HOME": str(home)}
    done = subprocess.run(
        [*RESOLUTE, "experiment", "create", "exp.yaml", "--follow"],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    exp_id = int(re.search(r"experiment (\d+) \(jobstyle\) COMPLETED", done.stdout).group(1))
    assert trial_marks(home, exp_id) == [3.0]
