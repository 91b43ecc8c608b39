"""Checkpoints, config and logs of one experiment, on a local disk or an object store.

Layout under ``root`` (a local path, or an ``s3://`` / ``gs://`` URI)::

    <root>/mlflow.db                                   default MLflow store (local roots)
    <root>/experiments/<id>/config.yaml
    <root>/experiments/<id>/trials/<trial>/checkpoints/<name>/...   + .complete
    <root>/experiments/<id>/trials/<trial>/logs/trial.log
    <root>/experiments/<id>/trials/<trial>/tensorboard/

A checkpoint is a directory that holds a ``.complete`` marker (JSON: every file and its
size); readers ignore directories without one, so nothing half-written ever counts as a
checkpoint. On a local disk the directory is built under a temporary name, every file is
fsynced, the marker written, and the directory renamed into place. On an object store
(where a rename is a copy), the files go under the final prefix and the marker is written
last; a save under an existing name first deletes the old marker.

Object-store roots are opened with ``pyarrow.fs.FileSystem.from_uri`` on first use, so
credentials, region and endpoint come from the URI query (``?region=...``) or the usual
environment. Logs and TensorBoard files of a remote root are written to a local staging
directory and uploaded by ``sync_logs()``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
import threading
import uuid
from pathlib import Path, PurePosixPath

import pyarrow.fs as pafs

from resolute.errors import NotFound, StorageError
from resolute.runtime.storage_fs import (
    MARKER,
    _check_name,
    _copy_regular,
    _download,
    _fsync_dir,
    _join,
    _Location,
    _make_parent,
    _marker_bytes,
    _read_manifest,
    _source_files,
)

__all__ = ["MARKER", "ExperimentStorage", "checkpoint_uri_to_local", "default_tracking_uri"]


def checkpoint_uri_to_local(uri: str, *, dest_dir: Path | None = None) -> Path:
    """A local directory holding the checkpoint at ``uri``.

    For a local checkpoint that is the checkpoint itself (read it, never write into it);
    a remote one is downloaded into ``dest_dir/<name>`` (default: a new temporary
    directory). Raises ``NotFound`` if it does not exist, ``StorageError`` if incomplete.
    """
    loc = _Location(uri)
    if loc.local:
        _read_manifest(loc.fs, loc.path, uri)
        return Path(loc.path)
    base = dest_dir if dest_dir is not None else Path(tempfile.mkdtemp(prefix="resolute-ckpt-"))
    return _download(loc.fs, loc.path, uri, Path(base) / PurePosixPath(loc.path).name)


def default_tracking_uri(root: str) -> str:
    """The MLflow store used when the config names none: ``<root>/mlflow.db``."""
    loc = _Location(root)
    if not loc.local:
        raise StorageError(
            f"storage {root} is remote and MLflow cannot keep a SQLite store there: set "
            "tracking.mlflow_uri in the experiment config (an MLflow server or a local sqlite:///)"
        )
    Path(loc.path).mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{Path(loc.path) / 'mlflow.db'}"


class ExperimentStorage:
    """The files of experiment ``experiment_id`` under ``root``.

    ``filesystem``: an already configured ``pyarrow.fs.FileSystem`` (custom S3 endpoint,
    credentials) in which ``root`` is a path; checkpoints on it always use the marker
    protocol, as on an object store. ``staging_dir``: where logs of a remote root are kept
    until ``sync_logs()`` uploads them.
    """

    def __init__(
        self,
        root: str,
        experiment_id: int,
        *,
        filesystem: pafs.FileSystem | None = None,
        staging_dir: Path | None = None,
    ) -> None:
        self._loc = _Location(str(root), filesystem)
        self.experiment_id = experiment_id
        self.root = self._loc.uri(self._loc.path) if self._loc.scheme else self._loc.path
        self.experiment_path = _join(self._loc.path, "experiments", str(experiment_id))
        if self._loc.local or not self._loc.scheme:
            self._local_base: Path = Path(self.experiment_path)
        else:
            digest = hashlib.sha256(self.root.encode()).hexdigest()[:16]
            base = staging_dir or Path(tempfile.gettempdir()) / "resolute-staging" / digest
            self._local_base = Path(base) / "experiments" / str(experiment_id)
        self._synced: dict[Path, tuple[int, int]] = {}
        self._sync_lock = threading.Lock()

    @property
    def is_local(self) -> bool:
        """Whether files live on this machine's disk (logs are written in place)."""
        return not self._loc.scheme

    def _trial_path(self, trial_id: int, *parts: str) -> str:
        return _join(self.experiment_path, "trials", str(trial_id), *parts)

    def checkpoint_uri(self, trial_id: int, name: str) -> str:
        """Where ``save_checkpoint(trial_id, name, ...)`` publishes (no IO)."""
        _check_name(name)
        return self._loc.uri(self._trial_path(trial_id, "checkpoints", name))

    # --- config ----------------------------------------------------------------------

    def write_config(self, yaml_text: str) -> str:
        """Write ``config.yaml`` atomically (readers see the old or the new one); its uri."""
        path = _join(self.experiment_path, "config.yaml")
        data = yaml_text.encode()
        try:
            if self._loc.local:
                target = Path(path)
                target.parent.mkdir(parents=True, exist_ok=True)
                tmp = target.parent / f".config.yaml.tmp-{uuid.uuid4().hex[:8]}"
                with open(tmp, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, target)
                _fsync_dir(target.parent)
            else:
                # A single object PUT is atomic on S3 and GCS.
                _make_parent(self._loc.fs, path)
                with self._loc.fs.open_output_stream(path) as out:
                    out.write(data)
        except OSError as e:
            raise StorageError(f"writing {self._loc.uri(path)} failed: {e}") from e
        return self._loc.uri(path)

    def read_config(self) -> str:
        path = _join(self.experiment_path, "config.yaml")
        try:
            with self._loc.fs.open_input_stream(path) as f:
                return bytes(f.read()).decode()
        except FileNotFoundError as e:
            raise NotFound(
                f"{self._loc.uri(path)} does not exist; was the experiment created here?"
            ) from e

    # --- checkpoints -----------------------------------------------------------------

    def save_checkpoint(self, trial_id: int, name: str, src_dir: Path) -> str:
        """Publish the local directory ``src_dir`` as checkpoint ``name`` of the trial and
        return its uri. All or nothing: if the copy fails, no checkpoint of that name is
        visible (a previous one under the same name is gone, others are untouched)."""
        uri = self.checkpoint_uri(trial_id, name)
        final = self._trial_path(trial_id, "checkpoints", name)
        try:
            files = _source_files(Path(src_dir))
            if self._loc.local:
                self._save_local(files, Path(final))
            else:
                self._save_object_store(files, final)
        except (OSError, StorageError) as e:
            raise StorageError(
                f"saving checkpoint {uri} from {src_dir} failed: {e}. Nothing was published "
                "and the trial's other checkpoints are intact; check that the source is "
                "readable and the storage writable and not full"
            ) from e
        return uri

    def _save_local(self, files: list[tuple[str, Path]], final: Path) -> None:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.parent / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
        trash: Path | None = None
        try:
            sizes: dict[str, int] = {}
            for rel, src in files:
                target = tmp / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                with open(target, "wb") as out:
                    sizes[rel] = _copy_regular(src, out)
                    out.flush()
                    os.fsync(out.fileno())
            tmp.mkdir(exist_ok=True)
            with open(tmp / MARKER, "wb") as out:
                out.write(_marker_bytes(sizes))
                out.flush()
                os.fsync(out.fileno())
            for folder in sorted({(tmp / rel).parent for rel, _ in files} | {tmp}, reverse=True):
                _fsync_dir(folder)
            if final.exists():
                # A directory cannot be renamed over a non-empty one: move the old aside.
                trash = final.parent / f".trash-{final.name}-{uuid.uuid4().hex[:8]}"
                os.rename(final, trash)
            os.rename(tmp, final)
            _fsync_dir(final.parent)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            if trash is not None:
                shutil.rmtree(trash, ignore_errors=True)

    def _save_object_store(self, files: list[tuple[str, Path]], final: str) -> None:
        fs = self._loc.fs
        self._unpublish(final)
        try:
            sizes: dict[str, int] = {}
            for rel, src in files:
                _make_parent(fs, _join(final, rel))
                with fs.open_output_stream(_join(final, rel)) as out:
                    sizes[rel] = _copy_regular(src, out)
            _make_parent(fs, _join(final, MARKER))
            with fs.open_output_stream(_join(final, MARKER)) as out:
                out.write(_marker_bytes(sizes))
        except BaseException:
            with contextlib.suppress(OSError):  # without a marker the rest is invisible
                fs.delete_dir(final)
            raise

    def _unpublish(self, path: str) -> None:
        """Remove the marker first, so the directory stops counting before it goes."""
        fs = self._loc.fs
        if fs.get_file_info(_join(path, MARKER)).type == pafs.FileType.File:
            fs.delete_file(_join(path, MARKER))
        if fs.get_file_info(path).type == pafs.FileType.Directory:
            fs.delete_dir(path)

    def load_checkpoint(self, uri: str, dest_dir: Path) -> Path:
        """Copy the checkpoint at ``uri`` (any trial, any experiment in this store) into
        ``dest_dir/<name>`` and return that directory. ``NotFound`` if it does not exist,
        ``StorageError`` if it is incomplete or corrupt."""
        loc = _Location(uri, self._loc.given)
        if loc.scheme != self._loc.scheme:
            raise StorageError(f"checkpoint {uri} is not in storage {self.root}")
        return _download(self._loc.fs, loc.path, uri, Path(dest_dir) / PurePosixPath(loc.path).name)

    def delete_checkpoint(self, uri: str) -> None:
        """Delete one of this experiment's checkpoints; a missing one is not an error (a
        retried garbage collection). A uri outside this experiment is refused."""
        loc = _Location(uri, self._loc.given)  # parsing only: no request before the check
        exp = self.experiment_path.rstrip("/") + "/"
        rel = loc.path[len(exp) :].split("/") if loc.path.startswith(exp) else []
        if (
            loc.scheme != self._loc.scheme
            or len(rel) != 4
            or (rel[0], rel[2]) != ("trials", "checkpoints")
            or any(part in ("", ".", "..") for part in rel)
        ):
            raise StorageError(
                f"refusing to delete {uri}: not a checkpoint of experiment "
                f"{self.experiment_id} in {self.root}"
            )
        try:
            if self._loc.local:
                path = Path(loc.path)
                if not path.exists():
                    return
                trash = path.parent / f".trash-{path.name}-{uuid.uuid4().hex[:8]}"
                os.rename(path, trash)  # gone from view at once, then removed
                shutil.rmtree(trash)
            else:
                self._unpublish(loc.path)
        except OSError as e:
            raise StorageError(f"deleting checkpoint {uri} failed: {e}") from e

    def list_checkpoints(self, trial_id: int) -> list[str]:
        """Uris of the trial's complete checkpoints, by name."""
        fs = self._loc.fs
        folder = self._trial_path(trial_id, "checkpoints")
        entries = fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
        dirs = sorted(
            e.path
            for e in entries
            if e.type == pafs.FileType.Directory and not e.base_name.startswith(".")
        )
        markers = fs.get_file_info([_join(d, MARKER) for d in dirs])
        return [
            self._loc.uri(d)
            for d, m in zip(dirs, markers, strict=True)
            if m.type == pafs.FileType.File
        ]

    # --- logs and TensorBoard --------------------------------------------------------

    def trial_log_path(self, trial_id: int) -> Path:
        """The local file to append the trial's log to (parents created)."""
        path = self._local_base / "trials" / str(trial_id) / "logs" / "trial.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def tensorboard_dir(self, trial_id: int) -> Path:
        """The local directory for the trial's TensorBoard event files (created)."""
        path = self._local_base / "trials" / str(trial_id) / "tensorboard"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def sync_logs(self) -> int:
        """Upload staged logs and event files that changed since the last call (remote
        roots; a no-op for local ones). Returns how many files were uploaded."""
        if self.is_local:
            return 0
        uploaded = 0
        with self._sync_lock:
            for path in sorted(p for p in self._local_base.rglob("*") if p.is_file()):
                st = path.stat()
                if self._synced.get(path) == (st.st_size, st.st_mtime_ns):
                    continue
                rel = path.relative_to(self._local_base).as_posix()
                target = _join(self.experiment_path, rel)
                try:
                    _make_parent(self._loc.fs, target)
                    with self._loc.fs.open_output_stream(target) as out:
                        _copy_regular(path, out)
                except OSError as e:
                    raise StorageError(
                        f"uploading {path} to {self._loc.uri(target)} failed: {e}"
                    ) from e
                self._synced[path] = (st.st_size, st.st_mtime_ns)
                uploaded += 1
        return uploaded

    def read_trial_log(self, trial_id: int, *, tail_bytes: int = 1 << 16) -> str | None:
        """The end of the trial's log as stored (for a remote root: as last synced), or
        None when there is none yet."""
        path = self._trial_path(trial_id, "logs", "trial.log")
        try:
            with self._loc.fs.open_input_file(path) as f:
                size = f.size()
                f.seek(max(0, size - tail_bytes))
                return bytes(f.read()).decode(errors="replace")
        except FileNotFoundError:
            return None
