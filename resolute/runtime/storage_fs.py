"""Where storage points and the checkpoint marker protocol, below ``ExperimentStorage``.

``_Location`` turns a root or uri into a ``pyarrow`` filesystem and a path in it (and back);
the other helpers copy files, write and read the ``.complete`` marker that makes a
directory a checkpoint, and download a complete checkpoint, checking every file's size.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import time
import uuid
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pyarrow.fs as pafs

from resolute.errors import NotFound, StorageError

MARKER = ".complete"
_REMOTE_SCHEMES = {"s3": "s3", "gs": "gs", "gcs": "gs"}
_CHUNK = 8 << 20


class _Location:
    """Where a root or uri points: a filesystem (made on first use), a path in it, and how
    to turn a path back into a uri."""

    def __init__(self, spec: str, filesystem: pafs.FileSystem | None = None) -> None:
        self._fs = self.given = filesystem
        parts = urlsplit(spec)
        scheme = parts.scheme.lower()
        self.query = parts.query
        if filesystem is not None:
            self.local = False
            kind = filesystem.type_name
            self.scheme = {"local": "", "s3": "s3", "gcs": "gs"}.get(kind, kind)
            self.path = (parts.netloc + parts.path) if "://" in spec else spec
            if not self.scheme:
                self.path = str(Path(self.path).expanduser().resolve())
        elif scheme in ("", "file"):
            self.local, self.scheme = True, ""
            self.path = str(Path(parts.path if scheme == "file" else spec).expanduser().resolve())
        elif scheme in _REMOTE_SCHEMES:
            if not parts.netloc:
                raise StorageError(
                    f"storage URI {spec!r} names no bucket: use {scheme}://BUCKET/prefix"
                )
            self.local, self.scheme = False, _REMOTE_SCHEMES[scheme]
            self.path = parts.netloc + parts.path.rstrip("/")
        else:
            raise StorageError(
                f"storage {spec!r}: scheme {scheme!r} is not supported; use a local path, "
                "s3://bucket/prefix or gs://bucket/prefix"
            )
        self.path = self.path.rstrip("/") or "/"
        self._spec = spec

    @property
    def fs(self) -> pafs.FileSystem:
        if self._fs is None:
            if self.local:
                self._fs = pafs.LocalFileSystem()
            else:
                try:
                    self._fs = pafs.FileSystem.from_uri(self._spec)[0]
                except Exception as e:
                    raise StorageError(
                        f"cannot open storage {self._spec}: {e}. Check the credentials, the "
                        "region (add ?region=...) and that this machine can reach the store"
                    ) from e
        return self._fs

    def uri(self, path: str) -> str:
        if not self.scheme:
            return path
        return f"{self.scheme}://{path}" + (f"?{self.query}" if self.query else "")


def _join(*parts: str) -> str:
    return str(PurePosixPath(*parts))


def _parent(path: str) -> str:
    return str(PurePosixPath(path).parent)


def _make_parent(fs: pafs.FileSystem, path: str) -> None:
    # Object stores have no directories to make (and S3 would get empty marker objects).
    if fs.type_name not in ("s3", "gcs"):
        fs.create_dir(_parent(path), recursive=True)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _source_files(src_dir: Path) -> list[tuple[str, Path]]:
    """Every file to copy, as (relative posix path, path), refusing what is not a file."""
    if not src_dir.is_dir():
        raise StorageError(f"checkpoint source {src_dir} is not a directory; save a directory")
    files = []
    for dirpath, dirnames, filenames in os.walk(src_dir, followlinks=True):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            rel = path.relative_to(src_dir).as_posix()
            if rel == MARKER:
                raise StorageError(f"{path}: {MARKER} is a reserved name; rename that file")
            files.append((rel, path))
    return files


def _copy_regular(src: Path, out: Any) -> int:
    """Copy ``src`` into the open binary stream ``out``; refuse fifos, sockets, devices
    (opening a fifo would block the save forever)."""
    if not stat.S_ISREG(os.stat(src).st_mode):
        raise StorageError(f"{src} is not a regular file; a checkpoint holds files only")
    with open(src, "rb") as f:
        size = 0
        while chunk := f.read(_CHUNK):
            out.write(chunk)
            size += len(chunk)
        return size


def _marker_bytes(files: dict[str, int]) -> bytes:
    return json.dumps({"files": files, "created_at": time.time()}, sort_keys=True).encode()


def _check_name(name: str) -> None:
    if not name or name.startswith(".") or "/" in name or "\\" in name:
        raise StorageError(
            f"checkpoint name {name!r} is invalid: use one path component that does not "
            "start with '.' (for example 'step-000100')"
        )


def _read_manifest(fs: pafs.FileSystem, path: str, uri: str) -> dict[str, int]:
    marker, folder = fs.get_file_info([_join(path, MARKER), path])
    if marker.type != pafs.FileType.File:
        if folder.type == pafs.FileType.NotFound:
            raise NotFound(
                f"checkpoint {uri} does not exist; check the uri "
                "(`resolute trial describe <id>` lists a trial's checkpoints)"
            )
        raise StorageError(
            f"checkpoint {uri} is incomplete (no {MARKER} marker: its save was interrupted); "
            "restore from an earlier checkpoint"
        )
    with fs.open_input_stream(_join(path, MARKER)) as f:
        files: dict[str, int] = json.loads(f.read())["files"]
    return files


def _download(fs: pafs.FileSystem, path: str, uri: str, dest: Path) -> Path:
    """Copy a complete checkpoint into ``dest`` (replaced), verifying every file's size."""
    files = _read_manifest(fs, path, uri)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".loading-{dest.name}-{uuid.uuid4().hex[:8]}"
    try:
        for rel, size in files.items():
            target = tmp / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            with fs.open_input_stream(_join(path, rel)) as src, open(target, "wb") as out:
                while chunk := src.read(_CHUNK):
                    out.write(chunk)
            if target.stat().st_size != size:
                raise StorageError(
                    f"checkpoint {uri} is corrupt: {rel} has {target.stat().st_size} bytes, "
                    f"its marker says {size}; restore from an earlier checkpoint"
                )
        tmp.mkdir(parents=True, exist_ok=True)  # a checkpoint may hold no files
        if dest.exists():
            shutil.rmtree(dest)
        os.rename(tmp, dest)
    except OSError as e:
        raise StorageError(f"loading checkpoint {uri} into {dest} failed: {e}") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest
