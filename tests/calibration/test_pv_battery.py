"""PV and battery calibration on histories the twin made (known truth)."""

from __future__ import annotations

import pandas as pd
import pytest

from helpers import TWO_ROOMS
from pems.calibration.pv_battery import fit_battery, fit_pv
from pems.calibration.synthetic import make_history
from pems.twin.house import House


@pytest.fixture(scope="module")
def sunny():
    house = House.model_validate({
        **TWO_ROOMS, "pv": [{"kwp": 6.0, "tilt_deg": 30, "azimuth_deg": 200, "losses_pct": 14}],
        "inverter": {"ac_limit_w": 7000}, "grid": {"import_limit_w": 20000},
        "battery": {"capacity_kwh": 8.0, "max_charge_w": 3000, "max_discharge_w": 3000,
                    "eta_charge": 0.96, "eta_discharge": 0.92}})
    return house, make_history(house, "2024-04-10", 14, seed=4, weather="holzkirchen-2014-spring")


def test_pv_size_and_plane_are_recovered(sunny):
    house, syn = sunny
    # the calibrator is told a wrong size and plane
    told = house.model_copy(update={"pv": [house.pv[0].model_copy(update={"kwp": 4.0, "tilt_deg": 45,
                                                                          "azimuth_deg": 160})]})
    fit = fit_pv(told, syn.data, pd.Timedelta(minutes=15))
    assert fit.kwp_effective == pytest.approx(6.0 * 0.86, rel=0.05)
    assert fit.tilt_deg == pytest.approx(30, abs=6) and fit.azimuth_deg == pytest.approx(200, abs=10)
    assert fit.r2 > 0.98


def test_battery_capacity_and_round_trip_efficiency_are_recovered(sunny):
    _, syn = sunny
    fit = fit_battery(syn.data, pd.Timedelta(minutes=15))
    assert fit.capacity_kwh == pytest.approx(8.0, rel=0.05)
    assert fit.round_trip_efficiency == pytest.approx(0.96 * 0.92, abs=0.02)


def test_no_pv_or_battery_data_means_no_fit(sunny):
    _, syn = sunny
    step = pd.Timedelta(minutes=15)
    assert fit_battery(syn.data.drop(columns=["soc"]), step) is None
    assert fit_pv(sunny[0], syn.data.drop(columns=["P_pv"]), step) is None
