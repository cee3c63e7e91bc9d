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
