"""Fixtures shared by all tests (helpers live in helpers.py)."""

from __future__ import annotations

import numpy as np
import pytest

import helpers
from pems.twin.house import House


@pytest.fixture
def two_rooms() -> House:
    return helpers.two_rooms()


@pytest.fixture
def two_rooms_battery() -> House:
    return helpers.two_rooms_battery()


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(12345)
