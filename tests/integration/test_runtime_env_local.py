"""An embedded Ray (no cluster) imports the trials' code straight from context_dir, but
``environment.pip`` and ``environment.env_vars`` still reach the trial processes through their
runtime_env. The pip requirement is a wheel built here, so no network is needed."""

from __future__ import annotations

import base64
import hashlib
import os
import zipfile
from pathlib import Path
from typing import Any

import pytest
import ray
import yaml

from resolute.config import load_config
from resolute.runtime import client
from resolute.runtime.journal import Journal

pytestmark = pytest.mark.integration

TRAIN = """\
import os
import time

MARK_AT_IMPORT = os.environ.get("RESOLUTE_TEST_MARK")


def train(ctx):
    import resolute_pipcheck  # only in the trial's pip environment

    step = 0
    while not ctx.should_stop():
        step += 1
        local = 10.0 if os.path.realpath(__file__).startswith(%r) else 0.0
        value = local + float(MARK_AT_IMPORT) + resolute_pipcheck.VALUE
        ctx.report(step, {"value": value})
        time.sleep(0.02)
"""


def build_wheel(folder: Path, value: float) -> Path:
    """A pure-Python wheel of one module, ``resolute_pipcheck`` with ``VALUE = value``."""
    name, version = "resolute_pipcheck", "0.1"
    files = {
        f"{name}/__init__.py": f"VALUE = {value!r}\n",
        f"{name}-{version}.dist-info/METADATA": (
            f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
        ),
        f"{name}-{version}.dist-info/WHEEL": (
            "Wheel-Version: 1.0\nGenerator: resolute-tests\nRoot-Is-Purelib: true\n"
            "Tag: py3-none-any\n"
        ),
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
        record.append(f"{path},sha256={digest.decode()},{len(text.encode())}")
    record.append(f"{name}-{version}.dist-info/RECORD,,")
    files[f"{name}-{version}.dist-info/RECORD"] = "\n".join(record) + "\n"
    wheel = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for path, text in files.items():
            zf.writestr(path, text)
    return wheel


@pytest.fixture(scope="module")
def conn(ray_local, tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    connection = client.connect(journal_url=f"sqlite:///{home / 'resolute.db'}")
    connection.home = home  # type: ignore[attr-defined]
    yield connection
    ray.get(connection.scheduler.shutdown.remote())
    ray.kill(connection.scheduler)


def test_pip_and_env_vars_reach_trials_of_an_embedded_ray(conn, tmp_path):
    assert conn.embedded
    code = tmp_path / "code"
    code.mkdir()
    (code / "envfn.py").write_text(TRAIN % os.path.realpath(code))
    wheel = build_wheel(tmp_path, 0.5)
    data: dict[str, Any] = {
        "name": "local-env",
        "entrypoint": "envfn:train",
        "context_dir": str(code),
        "storage": str(tmp_path / "storage"),
        "seed": 1,
        "hyperparameters": {"x": 1},
        "searcher": {"name": "single", "metric": "value", "max_time": 3},
        "max_restarts": 0,
        "environment": {"pip": [str(wheel)], "env_vars": {"RESOLUTE_TEST_MARK": "2"}},
    }
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(data))
    exp_id = client.submit(conn, load_config(path))
    with open(os.devnull, "w") as out:
        summary = client.follow(conn, exp_id, out=out, poll_s=0.5)
    assert summary["status"] == "COMPLETED", summary
    # 10 (imported from context_dir itself: nothing packed) + 2 (the variable, set before
    # the module was imported) + 0.5 (the pip-installed wheel)
    assert summary["best_metric"] == 12.5
    stored = Journal(f"sqlite:///{conn.home / 'resolute.db'}").get_experiment(exp_id)
    assert yaml.safe_load(stored.config_yaml)["environment"]["package"] is None  # not packed
