"""ExperimentStorage on real disks: one contract, run against each checkpoint protocol.

"local" is a plain directory (build under a temp name, fsync, rename). "object-store" runs
the object-store code path (files under the final prefix, ``.complete`` marker last, logs
staged locally and uploaded by ``sync_logs``) through ``pyarrow.fs.SubTreeFileSystem`` over
a real local directory: real files, no network. S3 and GCS themselves are checked for URI
handling and refusals, and against a real S3 client that cannot connect.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from resolute.errors import NotFound, StorageError
from resolute.runtime.storage import (
    MARKER,
    ExperimentStorage,
    checkpoint_uri_to_local,
    default_tracking_uri,
)

EXP = 7

Factory = Callable[[int], ExperimentStorage]


@pytest.fixture(params=["local", "object-store"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, Factory, Path]:
    """(name, storage for an experiment id, the directory the files really land in)."""
    disk = tmp_path / "root"
    disk.mkdir()
    if request.param == "local":
        return "local", lambda eid: ExperimentStorage(str(disk), eid), disk
    fs = pafs.SubTreeFileSystem(str(disk), pafs.LocalFileSystem())
    staging = tmp_path / "staging"
    return (
        "object-store",
        lambda eid: ExperimentStorage("store", eid, filesystem=fs, staging_dir=staging),
        disk / "store",
    )


def _tree(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _make_source(path: Path, seed: int = 0) -> dict[str, bytes]:
    files = {
        "model.pt": os.urandom(300_000) + bytes([seed]),
        "optim/state.bin": bytes(range(256)) * 40,
        "optim/empty": b"",
        "meta.json": b'{"step": %d}' % seed,
    }
    for rel, data in files.items():
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
        (path / rel).write_bytes(data)
    return files


def test_save_list_load_round_trip(backend, tmp_path: Path) -> None:
    name, make, disk = backend
    storage = make(EXP)
    src = tmp_path / "src"
    files = _make_source(src)
    uri = storage.save_checkpoint(3, "step-000100", src)
    assert uri == storage.checkpoint_uri(3, "step-000100")
    assert uri.endswith("experiments/7/trials/3/checkpoints/step-000100")
    on_disk = disk / "experiments/7/trials/3/checkpoints/step-000100"
    assert (on_disk / MARKER).is_file()
    assert {k: v for k, v in _tree(on_disk).items() if k != MARKER} == files
    assert storage.list_checkpoints(3) == [uri]
    assert storage.list_checkpoints(4) == []

    loaded = storage.load_checkpoint(uri, tmp_path / "dest")
    assert loaded == tmp_path / "dest" / "step-000100"
    assert _tree(loaded) == files  # the marker is not handed to user code
    # Loading again replaces what is there.
    (loaded / "stray").write_bytes(b"x")
    assert _tree(storage.load_checkpoint(uri, tmp_path / "dest")) == files

    if name == "local":
        assert checkpoint_uri_to_local(uri) == on_disk
        # Another process (a worker) opens the same root and reads it.
        assert (
            _tree(ExperimentStorage(str(disk), EXP).load_checkpoint(uri, tmp_path / "w")) == files
        )


def test_saving_under_an_existing_name_replaces_it(backend, tmp_path: Path) -> None:
    _, make, _ = backend
    storage = make(EXP)
    first, second = tmp_path / "a", tmp_path / "b"
    _make_source(first, seed=1)
    files2 = {"only.bin": b"second"}
    second.mkdir()
    (second / "only.bin").write_bytes(b"second")
    storage.save_checkpoint(1, "ck", first)
    uri = storage.save_checkpoint(1, "ck", second)
    assert storage.list_checkpoints(1) == [uri]
    assert _tree(storage.load_checkpoint(uri, tmp_path / "d")) == files2


@pytest.mark.parametrize("bad", ["broken-symlink", "fifo", "directory-missing"])
def test_failed_save_publishes_nothing(backend, tmp_path: Path, bad: str) -> None:
    _, make, disk = backend
    storage = make(EXP)
    good = tmp_path / "good"
    _make_source(good)
    kept = storage.save_checkpoint(2, "step-1", good)

    src = tmp_path / "src"
    _make_source(src)  # these copy first ("meta.json" < "z...")
    if bad == "broken-symlink":
        (src / "zz-weights").symlink_to(tmp_path / "nowhere")
    elif bad == "fifo":
        os.mkfifo(src / "zz-pipe")  # opening it would block the save forever
    else:
        src = tmp_path / "does-not-exist"
    with pytest.raises(StorageError, match="Nothing was published"):
        storage.save_checkpoint(2, "step-2", src)

    assert storage.list_checkpoints(2) == [kept]
    with pytest.raises(NotFound):
        storage.load_checkpoint(storage.checkpoint_uri(2, "step-2"), tmp_path / "d")
    ckpt_dir = disk / "experiments/7/trials/2/checkpoints"
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["step-1"]  # no leftovers either
    assert _tree(storage.load_checkpoint(kept, tmp_path / "k")) == _tree(good)


_CRASHER = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    import pyarrow.fs as pafs
    from resolute.runtime import storage as st

    disk, kind, src = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    if kind == "local":
        s = st.ExperimentStorage(disk, 7)
    else:
        fs = pafs.SubTreeFileSystem(disk, pafs.LocalFileSystem())
        s = st.ExperimentStorage("store", 7, filesystem=fs)
    copies = 0

    def die_on_second_file(frame, event, arg):
        global copies
        if event == "call" and frame.f_code is st._copy_regular.__code__:
            copies += 1
            if copies == 2:  # one file is fully written, the process dies on the next
                os.kill(os.getpid(), signal.SIGKILL)

    sys.setprofile(die_on_second_file)
    s.save_checkpoint(5, "step-9", src)
    """
)


def test_a_save_killed_midway_leaves_no_checkpoint(backend, tmp_path: Path) -> None:
    name, make, disk = backend
    src = tmp_path / "src"
    _make_source(src)
    root = str(disk.parent if name == "object-store" else disk)
    proc = subprocess.run(
        [sys.executable, "-c", _CRASHER, root, name, str(src)], capture_output=True, timeout=60
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    storage = make(EXP)
    assert storage.list_checkpoints(5) == []
    uri = storage.checkpoint_uri(5, "step-9")
    # Something was written (so the crash really was midway), yet it is not a checkpoint.
    assert any((disk / "experiments/7/trials/5/checkpoints").rglob("*"))
    with pytest.raises((NotFound, StorageError)):
        storage.load_checkpoint(uri, tmp_path / "d")
    # A later save under the same name succeeds and is whole.
    storage.save_checkpoint(5, "step-9", src)
    assert _tree(storage.load_checkpoint(uri, tmp_path / "d")) == _tree(src)


def test_incomplete_and_corrupt_checkpoints_are_refused(backend, tmp_path: Path) -> None:
    _, make, disk = backend
    storage = make(EXP)
    partial = disk / "experiments/7/trials/1/checkpoints/half"
    partial.mkdir(parents=True)
    (partial / "model.pt").write_bytes(b"12")
    assert storage.list_checkpoints(1) == []
    with pytest.raises(StorageError, match="incomplete"):
        storage.load_checkpoint(storage.checkpoint_uri(1, "half"), tmp_path / "d")

    src = tmp_path / "src"
    _make_source(src)
    uri = storage.save_checkpoint(1, "whole", src)
    model = disk / "experiments/7/trials/1/checkpoints/whole/model.pt"
    model.write_bytes(model.read_bytes()[:1000])  # truncated behind our back
    with pytest.raises(StorageError, match="corrupt.*model.pt"):
        storage.load_checkpoint(uri, tmp_path / "d")
    assert not (tmp_path / "d" / "whole").exists()
    with pytest.raises(NotFound, match="does not exist"):
        storage.load_checkpoint(storage.checkpoint_uri(1, "never"), tmp_path / "d")


def test_delete_checkpoint(backend, tmp_path: Path) -> None:
    _, make, disk = backend
    storage = make(EXP)
    src = tmp_path / "src"
    _make_source(src)
    a = storage.save_checkpoint(1, "a", src)
    b = storage.save_checkpoint(1, "b", src)
    storage.delete_checkpoint(a)
    assert storage.list_checkpoints(1) == [b]
    assert not (disk / "experiments/7/trials/1/checkpoints/a").exists()
    with pytest.raises(NotFound):
        storage.load_checkpoint(a, tmp_path / "d")
    storage.delete_checkpoint(a)  # again: a retried GC is fine

    other = make(8).save_checkpoint(1, "a", src)
    config = storage.write_config("x: 1\n")
    for outside in (
        other,
        config,
        b.replace("checkpoints/b", "checkpoints/../../../config.yaml"),
        b.rsplit("/", 2)[0],
    ):
        with pytest.raises(StorageError, match="refusing to delete"):
            storage.delete_checkpoint(outside)
    assert storage.list_checkpoints(1) == [b]
    assert make(8).list_checkpoints(1) == [other]


def test_checkpoint_names_are_checked(backend, tmp_path: Path) -> None:
    _, make, _ = backend
    storage = make(EXP)
    (tmp_path / "s").mkdir()
    for bad in ("", ".hidden", "a/b", "..", "a\\b"):
        with pytest.raises(StorageError, match="checkpoint name"):
            storage.save_checkpoint(1, bad, tmp_path / "s")
    (tmp_path / "s" / MARKER).write_bytes(b"{}")
    with pytest.raises(StorageError, match="reserved"):
        storage.save_checkpoint(1, "ok", tmp_path / "s")


def test_config_is_written_whole(backend) -> None:
    _, make, disk = backend
    storage = make(EXP)
    with pytest.raises(NotFound):
        storage.read_config()
    storage.write_config("name: a\n")
    storage.write_config("name: b\nlr: 0.1\n")
    assert storage.read_config() == "name: b\nlr: 0.1\n"
    folder = disk / "experiments/7"
    assert sorted(p.name for p in folder.iterdir() if p.is_file()) == ["config.yaml"]


def test_logs_and_tensorboard(backend) -> None:
    name, make, disk = backend
    storage = make(EXP)
    log = storage.trial_log_path(3)
    tb = storage.tensorboard_dir(3)
    assert tb.is_dir() and log.parent.is_dir()
    assert log.parts[-5:] == ("7", "trials", "3", "logs", "trial.log")
    assert tb.parts[-4:] == ("7", "trials", "3", "tensorboard")
    assert storage.read_trial_log(3) is None
    log.write_text("line 1\n")
    (tb / "events.out").write_bytes(b"\x00\x01")
    if name == "local":
        assert storage.is_local and log == disk / "experiments/7/trials/3/logs/trial.log"
        assert storage.sync_logs() == 0
    else:
        assert not storage.is_local and not log.is_relative_to(disk)
        assert storage.read_trial_log(3) is None  # staged, not uploaded yet
        assert storage.sync_logs() == 2
        assert storage.sync_logs() == 0  # nothing changed
        with log.open("a") as f:
            f.write("line 2\n")
        assert storage.sync_logs() == 1
        assert (disk / "experiments/7/trials/3/tensorboard/events.out").read_bytes() == b"\x00\x01"
    assert storage.read_trial_log(3) == ("line 1\n" if name == "local" else "line 1\nline 2\n")
    assert storage.read_trial_log(3, tail_bytes=3).endswith("\n")


# --- object-store URIs: parsing and refusals (no network) --------------------------------


def test_s3_and_gs_roots_are_parsed_without_io(tmp_path: Path) -> None:
    start = time.monotonic()
    s3 = ExperimentStorage(
        "s3://bucket/runs/?region=eu-west-1",
        4,
        staging_dir=tmp_path / "stage",
    )
    assert s3.root == "s3://bucket/runs?region=eu-west-1"
    assert s3.checkpoint_uri(2, "c1") == (
        "s3://bucket/runs/experiments/4/trials/2/checkpoints/c1?region=eu-west-1"
    )
    assert not s3.is_local
    assert s3.trial_log_path(2) == tmp_path / "stage/experiments/4/trials/2/logs/trial.log"
    assert s3.tensorboard_dir(2) == tmp_path / "stage/experiments/4/trials/2/tensorboard"
    gs = ExperimentStorage("gs://b/p", 1)
    assert gs.checkpoint_uri(1, "x") == "gs://b/p/experiments/1/trials/1/checkpoints/x"
    assert ExperimentStorage("gcs://b/p", 1).root == "gs://b/p"
    # A uri outside the experiment is refused before any request is made.
    with pytest.raises(StorageError, match="refusing to delete"):
        s3.delete_checkpoint("s3://bucket/runs/experiments/5/trials/2/checkpoints/c1")
    with pytest.raises(StorageError, match="refusing to delete"):
        s3.delete_checkpoint("gs://bucket/runs/experiments/4/trials/2/checkpoints/c1")
    assert time.monotonic() - start < 2.0


@pytest.mark.parametrize(
    ("root", "match"),
    [
        ("s3://", "names no bucket"),
        ("gs:///path", "names no bucket"),
        ("ftp://host/x", "not supported"),
        ("hdfs://namenode/x", "not supported"),
    ],
)
def test_unsupported_roots_are_refused(root: str, match: str) -> None:
    with pytest.raises(StorageError, match=match):
        ExperimentStorage(root, 1)
    with pytest.raises(StorageError, match=match):
        checkpoint_uri_to_local(root + "/experiments/1/trials/1/checkpoints/a")


def test_default_tracking_uri(tmp_path: Path) -> None:
    root = tmp_path / "new" / "root"
    assert default_tracking_uri(str(root)) == f"sqlite:///{root}/mlflow.db"
    assert default_tracking_uri(str(root)).startswith("sqlite:////")  # absolute path
    assert root.is_dir()
    with pytest.raises(StorageError, match="tracking.mlflow_uri"):
        default_tracking_uri("s3://bucket/x")


def test_unreachable_s3_fails_fast_with_advice(tmp_path: Path) -> None:
    """The real S3 client against an endpoint that refuses connections."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        port = closed.getsockname()[1]
        fs = pafs.S3FileSystem(
            region="us-east-1",
            endpoint_override=f"127.0.0.1:{port}",
            scheme="http",
            access_key="k",
            secret_key="s",
            retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=1),
            connect_timeout=2,
            request_timeout=2,
        )
        storage = ExperimentStorage("s3://bucket/runs", 1, filesystem=fs)
        src = tmp_path / "src"
        _make_source(src)
        uri = storage.checkpoint_uri(1, "c")
        assert uri == "s3://bucket/runs/experiments/1/trials/1/checkpoints/c"
        start = time.monotonic()
        with pytest.raises(StorageError, match=f"saving checkpoint {uri}.*storage writable"):
            storage.save_checkpoint(1, "c", src)
        with pytest.raises(StorageError, match="writing s3://bucket/runs/experiments/1/config"):
            storage.write_config("a: 1\n")
        assert time.monotonic() - start < 15
