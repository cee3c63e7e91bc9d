"""Fixtures of the live tests: a broker per test, the two-room battery house's day per module."""

from __future__ import annotations

import pytest

from helpers import BATTERY_HOUSE, write_scenario
from services import mosquitto


@pytest.fixture
def broker(tmp_path):
    """A real mosquitto on 127.0.0.1 (skips when the Debian package is not installed)."""
    with mosquitto(tmp_path) as b:
        yield b


@pytest.fixture(scope="module")
def prep(tmp_path_factory):
    """The two-room battery house, one day of January (Greensboro TMY3), BDEW H25 load, two-rate tariff."""
    from pems.scenarios.runner import prepare
    from pems.scenarios.spec import load_scenario

    folder = tmp_path_factory.mktemp("loop")
    return prepare(load_scenario(write_scenario(folder, BATTERY_HOUSE, weather="greensboro-tmy3", load="h25",
                                                prices="two-rate")))
