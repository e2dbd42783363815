"""Shared test set-up: caches and databases go to a temporary folder, never the user's."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(autouse=True, scope="session")
def _isolated_user_folders(tmp_path_factory: pytest.TempPathFactory):
    """Point the cache and the default latency database at a session-wide temporary folder."""
    root = tmp_path_factory.mktemp("akd-home")
    saved = {k: os.environ.get(k) for k in ("AKD_CACHE_DIR", "AKD_DB", "XDG_CACHE_HOME", "XDG_DATA_HOME")}
    os.environ["AKD_CACHE_DIR"] = str(root / "cache")
    os.environ["AKD_DB"] = str(root / "latency.sqlite")
    os.environ["XDG_CACHE_HOME"] = str(root / "xdg-cache")
    os.environ["XDG_DATA_HOME"] = str(root / "xdg-data")
    yield root
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture()
def key(tmp_path: Path) -> Path:
    """A fresh ADB key pair (private key path; the public key beside it)."""
    from devices_support import make_key

    return make_key(tmp_path / "keys")


@pytest.fixture()
def served(tmp_path: Path, key: Path):
    """A loopback ADB daemon on a free port, serving tmp_path/root, trusting `key`."""
    from devices_support import daemon

    with daemon(tmp_path / "root", key) as d:
        yield d
