"""Calibration speed: the 17-room reference house from one year of 15-minute history.

Targets: at most 60 s on this machine with the structure selection ("Calibration that finds the
house's structure"; five minutes before it, "Calibration from history"). The history is made by the twin itself with
hidden parameters (±30 %), sensor noise, 0.1 K quantisation and unmodelled occupancy gains.
"""

from __future__ import annotations

import pytest

from pems.calibration.calibrate import calibrate
from pems.calibration.history import prepare_history
from pems.calibration.synthetic import make_history
from pems.twin.house import load_house


@pytest.fixture(scope="module")
def year():
    house = load_house("reference")
    syn = make_history(house, "2024-01-01", 365, seed=7)
    return house, syn, prepare_history(syn.data, "synthetic year", house)


def test_calibrate_reference_year(benchmark, year):
    house, syn, hist = year
    res = benchmark.pedantic(lambda: calibrate(house, hist), rounds=1, iterations=1)
    s = res.summary
    benchmark.extra_info.update({k: round(v, 4) if isinstance(v, float) else v for k, v in s.items()})
    assert benchmark.stats.stats.max < 60.0
    assert s["rmse_24h_k_mean"] < 0.3
