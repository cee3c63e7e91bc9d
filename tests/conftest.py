"""Fixtures shared by all tests (helpers live in helpers.py)."""

from __future__ import annotations

import os

# One OpenMP/BLAS thread per test process (as `make test` sets it): two xdist workers with two
# spinning OpenMP threads each on two cores slow scikit-learn's boosting down tenfold.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import helpers  # noqa: E402
from pems.twin.house import House  # noqa: E402


@pytest.fixture
def two_rooms() -> House:
    return helpers.two_rooms()


@pytest.fixture
def two_rooms_battery() -> House:
    return helpers.two_rooms_battery()


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(12345)


@pytest.fixture(autouse=True)
def _own_folders(tmp_path_factory, monkeypatch):
    """Nothing a test runs writes to the user's own state, cache, data or log folders (XDG's or a
    service's): each test session gets its own (see pems.paths)."""
    base = tmp_path_factory.getbasetemp() / "xdg"
    for var, sub in (("XDG_STATE_HOME", "state"), ("XDG_CACHE_HOME", "cache"), ("XDG_DATA_HOME", "data")):
        monkeypatch.setenv(var, str(base / sub))
    for var in ("STATE_DIRECTORY", "CACHE_DIRECTORY", "LOGS_DIRECTORY", "NOTIFY_SOCKET", "WATCHDOG_USEC"):
        monkeypatch.delenv(var, raising=False)
