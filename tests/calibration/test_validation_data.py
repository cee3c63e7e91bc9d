"""Calibration on real measured buildings nobody on this project made (skipped without ../shared/data)."""

from __future__ import annotations

import pandas as pd
import pytest

from helpers import shared_data
from pems.calibration.calibrate import calibrate
from pems.calibration.datasets import DATASETS
from pems.calibration.history import prepare_history


def run(name: str):
    shared_data("bacher-madsen-prbs" if name == "bacher-madsen" else "twinhouses-annex58")
    ds = DATASETS[name]()
    hist = prepare_history(ds.history, name, ds.house, pd.Timedelta(minutes=ds.step_minutes))
    return calibrate(ds.house, hist)


@pytest.mark.data
def test_bacher_madsen_building_is_predicted_a_day_ahead():
    res = run("bacher-madsen")
    m = res.metrics["room"]
    assert m.n_days >= 1 and m.rmse_24h_k < 0.5  # measured: 0.26 K
    assert res.quality.score > 0.9


@pytest.mark.data
@pytest.mark.slow
def test_twin_house_rooms_are_predicted_a_day_ahead():
    res = run("twinhouses-exp2")
    assert res.summary["validation_days"] >= 10
    assert res.summary["rmse_24h_k_mean"] < 0.4  # measured: 0.20 K mean over 8 zones
    for r, m in res.metrics.items():
        assert m.rmse_24h_k < 0.8, r
    assert not [f for f in res.fits.values() if f.status not in ("Solve_Succeeded", "Solved_To_Acceptable_Level")]
