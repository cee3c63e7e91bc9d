"""Scenarios whose true home has heat the twin does not know: gains, truth plant, learning controllers."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from helpers import TWO_ROOMS, house_from, write_constant_inputs, write_scenario
from pems.cli import main
from pems.scenarios.runner import prepare, run
from pems.scenarios.spec import load_scenario
from pems.scenarios.unmodelled import Truth, UnmodelledGain, unmodelled_gains

STEP = pd.Timedelta(minutes=15)


def test_scheduled_gain_energy_and_days():
    house = house_from(TWO_ROOMS)  # Europe/Prague unless the test house says otherwise
    idx = pd.date_range("2024-01-01", "2024-01-15", freq=STEP, tz="UTC", inclusive="left")  # Mon..Sun ×2
    truth = Truth(gains=[UnmodelledGain(room="a", watts=300, hours=[(8.0, 12.0)], days="workdays", day_to_day=0.0),
                         UnmodelledGain(room="b", watts=-200, hours=[(22.0, 2.0)], day_to_day=0.0)])
    g = unmodelled_gains(truth, house, idx, np.zeros(len(idx)), STEP)
    kwh = (g * 0.25 / 1000).sum()
    assert kwh["a"] == pytest.approx(10 * 4 * 0.3)  # ten workdays × 4 h × 300 W
    assert kwh["b"] == pytest.approx(-14 * 4 * 0.2, rel=0.02)  # wraps midnight; the ends of the period cut it
    local = g.index.tz_convert(house.site.timezone)
    assert (g["a"][local.day_of_week >= 5] == 0).all()


def test_window_gain_follows_the_sun_and_day_factors_are_reproducible():
    house = house_from(TWO_ROOMS)
    idx = pd.date_range("2024-03-01", periods=96 * 3, freq=STEP, tz="UTC")
    hours = (idx.hour + idx.minute / 60).to_numpy()
    ghi = np.clip(600 * np.sin(np.pi * (hours - 6) / 12), 0, None)
    truth = Truth(gains=[UnmodelledGain(room="a", kind="window", area_m2=2.0, g=0.5, azimuth_deg=180),
                         UnmodelledGain(room="b", watts=100, hours=[(0.0, 24.0)], day_to_day=0.5)])
    g = unmodelled_gains(truth, house, idx, ghi, STEP)
    assert (g["a"][ghi == 0] == 0).all() and g["a"].max() > 100  # up to ~0.5·2·(vertical south irradiance)
    later = unmodelled_gains(truth, house, idx[96:], ghi[96:], STEP)
    assert np.allclose(later["b"], g["b"].iloc[96:])  # the same day gets the same factor in any period


def _two_room_scenario(tmp_path, **truth):
    write_constant_inputs(tmp_path, "2023-12-01T00:00:00Z", 45, T_out=-3.0, ghi=0.0)
    gains = [{"room": "a", "watts": 400.0, "hours": [[17.0, 21.0]], "day_to_day": 0.1}]
    return write_scenario(tmp_path, TWO_ROOMS, days=1.0, truth={"train_days": 14, "gains": gains, **truth},
                          forecast={"horizon_hours": 24})


def test_truth_warms_the_plant_but_not_the_forecasts(tmp_path):
    prep = prepare(load_scenario(_two_room_scenario(tmp_path)))
    assert prep.history is not None and len(prep.history) == 14 * 96
    assert prep.history.index[-1] + STEP == prep.inputs.index[0]  # the history ends where the run starts
    extra = prep.plant_inputs["Q_int__a"] - prep.inputs["Q_int__a"]
    assert extra.max() == pytest.approx(400 * 1.1, rel=0.3) and (prep.plant_inputs["Q_int__b"] == prep.inputs["Q_int__b"]).all()
    r = run(prep, "rule-based")
    tr = r.trajectory
    # the plant felt the extra heat: the thermostat heats room a less in the evening than the model alone would
    evening = (tr.index.hour >= 17) & (tr.index.hour < 21)
    assert tr["P_heat__a"][evening].mean() < tr["P_heat__a"][~evening].mean()


def test_unknown_room_in_truth_is_a_clear_error(tmp_path, capsys):
    path = _two_room_scenario(tmp_path)
    path.write_text(path.read_text().replace('room = "a"', 'room = "attic"'))
    assert main(["simulate", str(path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "truth.gains[0].room" in err and "attic" in err and "Traceback" not in err


@pytest.mark.slow
def test_mpc_with_correctors_is_more_comfortable_at_no_more_than_two_percent_cost(tmp_path):
    """The closed-loop value of learning: two rooms, a day, evening gains in one and morning airing
    in the other; the plain MPC overheats into the gains and under-heats into the airing."""
    write_constant_inputs(tmp_path, "2023-12-01T00:00:00Z", 45, T_out=-3.0, ghi=0.0)
    gains = [{"room": "a", "watts": 500.0, "hours": [[16.0, 21.0]], "day_to_day": 0.05},
             {"room": "b", "watts": -500.0, "hours": [[6.0, 7.0]], "day_to_day": 0.05}]
    path = write_scenario(tmp_path, TWO_ROOMS, days=2.0, truth={"train_days": 21, "gains": gains},
                          forecast={"horizon_hours": 24}, prices="cz-spot-2024", start="2024-01-10T00:00:00Z")
    prep = prepare(load_scenario(path))
    plain, learned = run(prep, "mpc"), run(prep, "mpc+correctors")
    kp, kl = plain.kpis, learned.kpis
    assert kl["discomfort_Kh"] < kp["discomfort_Kh"]
    assert kl["cost"] <= 1.02 * kp["cost"]


def test_forecast_backtest_correctors_cli_reports_and_registers(tmp_path, capsys):
    """The corrector cuts the two-room 24 h-ahead error by far more than 30 % and lands in the registry."""
    path = _two_room_scenario(tmp_path)
    out, reg = tmp_path / "out", tmp_path / "models"
    assert main(["forecast", "backtest", "correctors", "--scenario", str(path), "--out", str(out),
                 "--registry", str(reg)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["reduction"] >= 0.3 and metrics["rmse_24h_corrected_K"] < metrics["rmse_24h_physics_K"]
    assert (out / "report.html").stat().st_size > 10_000  # with its figures inlined
    from pems.controllers.forecast.registry import ModelRegistry

    card = ModelRegistry(reg).champion("corrector")
    assert card is not None and card.reference_mae == pytest.approx(metrics["mae_24h_corrected_K"])
    assert card.data["sha256"] and card.libraries["scikit-learn"]
    corrector = ModelRegistry(reg).load("corrector")
    assert corrector.rooms["a"].enabled


def test_forecast_backtest_correctors_needs_a_truth_section(tmp_path, capsys):
    assert main(["forecast", "backtest", "correctors", "--scenario", "winter-week", "--out", str(tmp_path / "o")]) == 2
    assert "truth" in capsys.readouterr().err
