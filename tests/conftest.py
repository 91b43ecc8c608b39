"""Shared test setup: every test session gets its own Ray temp dir, never a shared one."""

from __future__ import annotations

import os
import tempfile

import pytest


@pytest.fixture(scope="session", autouse=True)
def _isolated_ray_tmpdir():
    # Ray's socket paths must stay short (AF_UNIX limit ~107 bytes): use a short /tmp dir.
    path = tempfile.mkdtemp(prefix="rs-", dir="/tmp")
    old = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = path
    yield path
    if old is None:
        os.environ.pop("RAY_TMPDIR", None)
    else:
        os.environ["RAY_TMPDIR"] = old
