"""Residual correctors: the smoother finds heat the model misses, the learned correction predicts it,
stays bounded, and improves 24 h-ahead predictions on held-out data."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest

from helpers import TWO_ROOMS, house_from
from pems.calibration.predict import ahead_errors
from pems.controllers.forecast.correctors import (CorrectorSettings, ResidualCorrector, gain_columns,
                                                  residual_gains)
from pems.scenarios.unmodelled import Truth, UnmodelledGain, add_gains, simulate_history, unmodelled_gains
from pems.twin.inputs import measured_disturbances
from pems.twin.model import build_model

STEP = pd.Timedelta(minutes=15)


def _history(days: float, gains: list[UnmodelledGain], seed: int = 0, noise: float = 0.05, quantum: float = 0.1):
    """Two rooms on a varying winter weather, under thermostats, with unmodelled gains."""
    house = house_from(TWO_ROOMS)
    model = build_model(house)
    n = int(round(pd.Timedelta(days=days) / STEP))
    index = pd.date_range("2024-01-01", periods=n, freq=STEP, tz="UTC")
    rng = np.random.default_rng(seed)
    hours = np.arange(n) * 0.25
    weather = pd.DataFrame({
        "T_out": -2 + 4 * np.sin(2 * np.pi * (hours - 9) / 24) + np.cumsum(rng.normal(0, 0.05, n)),
        "ghi": np.clip(500 * np.sin(2 * np.pi * (hours % 24 - 7) / 20), 0, None) * rng.uniform(0.2, 1.0, n // 96 + 1)[
            (np.arange(n) // 96)],
        "P_load": 300.0}, index=index)
    D = measured_disturbances(house, weather, STEP)
    truth = Truth(gains=gains, seed=seed, sensor_noise_k=noise, quantum_k=quantum)
    extra = unmodelled_gains(truth, house, index, weather["ghi"], STEP)
    plant_inputs = add_gains(D, extra).assign(ghi=weather["ghi"])
    x0 = np.r_[np.full(2, 20.5), np.full(2, 21.0)]
    data, _ = simulate_history(model, plant_inputs, x0, STEP, np.array([21.0, 20.0]), np.array([19.0, 18.0]), truth)
    return model, data, extra


GAINS = [UnmodelledGain(room="a", watts=400.0, hours=[(17.0, 21.0)], day_to_day=0.1),
         UnmodelledGain(room="b", watts=250.0, hours=[(8.0, 16.0)], days="workdays", day_to_day=0.1)]


def test_gain_columns_enter_the_air_node_as_internal_gains():
    model = build_model(house_from(TWO_ROOMS))
    cols = gain_columns(model)
    c_air = np.array([model.param(f"C_air__{r}") for r in model.rooms])
    # one watt of internal gain heats the room's air at 1/C_air kelvin per second, nothing else
    assert np.allclose(cols[model.air, :], np.diag(1.0 / c_air))
    assert np.allclose(cols[model.mass, :], 0.0)


def test_smoother_recovers_a_known_scheduled_gain():
    model, data, extra = _history(14, GAINS, noise=0.0, quantum=0.0)
    q = residual_gains(model, data, STEP)
    assert q.iloc[:96].isna().all().all()  # the filter's burn-in day is not claimed
    q, extra = q.iloc[96:], extra.iloc[96:]
    for r in ("a", "b"):
        assert np.corrcoef(q[r], extra[r])[0, 1] > 0.9, r
        # the energy it finds is the energy that was there, within 10 %
        assert q[r].mean() == pytest.approx(extra[r].mean(), rel=0.1), r


def test_smoother_finds_nothing_where_nothing_is_missing():
    model, data, _ = _history(10, [], noise=0.0, quantum=0.0)
    q = residual_gains(model, data, STEP).iloc[96:]
    assert q.abs().mean().max() < 5.0  # W, against heaters of 1–1.5 kW
    assert abs(q.mean()).max() < 1.0


@pytest.fixture(scope="module")
def fitted():
    model, data, extra = _history(35, GAINS, seed=1)
    train = data.iloc[: 28 * 96]
    corr = ResidualCorrector(model, STEP, country=None).fit(train)
    return model, data, extra, corr


def test_correction_cuts_24h_prediction_error_on_held_out_days(fitted):
    model, data, extra, corr = fitted
    test_start = data.index[28 * 96]
    phys = ahead_errors(model, data, STEP, start=test_start)
    both = ahead_errors(model, data, STEP, start=test_start, gains=corr.gains_for_history(data))
    rms = lambda e: float(np.sqrt(np.nanmean(e[list(model.rooms)].to_numpy() ** 2)))  # noqa: E731
    assert rms(both) <= 0.7 * rms(phys), (rms(phys), rms(both))
    assert all(rc.enabled for rc in corr.rooms.values())


def test_correction_is_bounded_and_falls_back_to_zero(fitted):
    model, data, _, corr = fitted
    D = measured_disturbances(model.house, data.iloc[:96 * 3], STEP)
    wild = D.copy()
    wild["T_out"] = 60.0
    wild[[c for c in wild if c.startswith("I_sol__")]] = 5000.0
    g = corr.gains(wild)
    for r, rc in corr.rooms.items():
        assert g[r].between(rc.low_w, rc.high_w).all()
        assert max(abs(rc.low_w), abs(rc.high_w)) <= 40.0 * model.house.room(r).floor_area_m2
    broken = D.copy()
    broken.loc[broken.index[:10], "T_out"] = np.nan
    gb = corr.gains(broken)
    assert (gb.iloc[:10] == 0.0).all().all() and np.isfinite(gb.to_numpy()).all()
    # an unfitted corrector corrects nothing
    assert (ResidualCorrector(model, STEP).gains(D) == 0.0).all().all()


@pytest.mark.slow
def test_a_room_whose_correction_does_not_help_is_switched_off():
    # gains in room a only; room b's "correction" would learn noise
    model, data, _ = _history(28, GAINS[:1], seed=2)
    corr = ResidualCorrector(model, STEP, CorrectorSettings(min_improvement=0.05), country=None).fit(data)
    assert corr.rooms["a"].enabled
    h = corr.rooms["b"].holdout
    if corr.rooms["b"].enabled:  # allowed only if it genuinely helps on held-out data
        assert h["rmse_corrected"] <= 0.95 * h["rmse_physics"]


def test_corrector_round_trips_through_pickle(fitted):
    model, data, _, corr = fitted
    D = measured_disturbances(model.house, data.iloc[:200], STEP)
    again = pickle.loads(pickle.dumps(corr))
    assert np.allclose(again.gains(D).to_numpy(), corr.gains(D).to_numpy())


def test_pems_forecast_fit_correctors_learns_the_homes_missing_heat_and_registers_it(tmp_path, capsys):
    """From a home's history (a file in the layout of docs/reference/history.md) to a registry champion that
    ``pems live --config`` with ``mpc+correctors`` accepts for this house."""
    import tomli_w

    from helpers import TWO_ROOMS
    from pems.cli import main
    from pems.controllers.forecast.registry import ModelRegistry

    _, data, _ = _history(35, GAINS, seed=2)
    data.index.name = "time"
    data.to_parquet(tmp_path / "history.parquet")
    (tmp_path / "house.toml").write_text(tomli_w.dumps(TWO_ROOMS), encoding="utf-8")
    argv = ["forecast", "fit", "correctors", "--history", str(tmp_path / "history.parquet"), "--house",
            str(tmp_path / "house.toml"), "--registry", str(tmp_path / "models"), "--days", "7",
            "--out", str(tmp_path / "out")]
    assert main(argv) == 0
    card = ModelRegistry(tmp_path / "models").champion("corrector")
    assert card is not None and card.kind == "ResidualCorrector"
    assert card.metrics["reduction"] >= 0.3 and card.metrics["rooms_corrected"] == 2
    assert card.metrics["mae"] < card.metrics["mae_24h_physics_K"]
    assert card.data["rows"] == str(35 * 96)  # the deployed correctors learned from all of it
    assert (tmp_path / "out" / "report.html").is_file()
    assert "twin + correctors" in capsys.readouterr().out
    # the live configuration takes it as this house's champion
    from pems.live.config import load_live_config

    cfg = tmp_path / "live.toml"
    cfg.write_text(tomli_w.dumps({"house": "house.toml", "controller": "mpc+correctors", "registry": "models",
                                  "mqtt": {"host": "127.0.0.1"},
                                  "forecast": {"weather": "greensboro-tmy3", "prices": "two-rate"}}), encoding="utf-8")
    assert tuple(load_live_config(cfg).champion_corrector().model.rooms) == ("a", "b")
    # too short a history for learning and scoring: one line, exit 2
    data.iloc[: 20 * 96].to_parquet(tmp_path / "short.parquet")
    argv[4] = str(tmp_path / "short.parquet")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "short.parquet" in err and "14 to learn from" in err
