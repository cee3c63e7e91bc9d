"""Learned PV and load forecasts in the live loop: the registry's champions replace the configured
sources where they can, from the history the loop measures (kept in its state folder); where they
cannot, the configured source stands and the forecast says why."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tomli_w

sys.path.insert(0, str(Path(__file__).parent))
from helpers import BATTERY_HOUSE, home_history, house_from  # noqa: E402

from pems.cli import main  # noqa: E402
from pems.live.config import LiveForecast, load_live_config  # noqa: E402
from pems.live.learned import FALLBACK, MeasuredHistory  # noqa: E402

ISSUE = pd.Timestamp("2024-04-15T10:07:30Z")  # the forecast's now: day 45 of the history


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """A folder with the house, 45 days of its history, a weather file reaching 3 days further, and a
    registry whose champions were learned on that history."""
    from pems.controllers.forecast.load import LoadForecaster
    from pems.controllers.forecast.pv import PVForecaster
    from pems.controllers.forecast.registry import ModelRegistry

    folder = tmp_path_factory.mktemp("learned")
    house = house_from(BATTERY_HOUSE)
    full = home_history(house, "2024-03-01", 48, seed=11)
    hist = full.loc[full.index < ISSUE.floor("D")]
    hist.to_parquet(folder / "history.parquet")
    full[["T_out", "ghi"]].reset_index().to_csv(folder / "weather.csv", index=False)
    reg = ModelRegistry(folder / "models")
    load = LoadForecaster("Europe/Prague", "CZ").fit(hist[["P_load", "T_out", "ghi"]])
    pv = PVForecaster(house.site).fit(hist[["P_pv", "ghi", "T_out"]])
    refs = {"load": reg.register(load, "load", "home").ref, "pv": reg.register(pv, "pv", "home").ref}
    return folder, hist, refs


def config(folder: Path, **forecast) -> Path:
    (folder / "house.toml").write_text(tomli_w.dumps(BATTERY_HOUSE), encoding="utf-8")
    top = {k[1:]: forecast.pop(k) for k in list(forecast) if k.startswith("_")}  # top-level keys
    cfg = {"house": "house.toml", "registry": "models", "mqtt": {"host": "127.0.0.1", "port": 1883},
           "modbus": {"host": "127.0.0.1", "port": 5020},
           "forecast": {"weather": "weather.csv", "load": "h25", "prices": "two-rate", "horizon_hours": 24,
                        "learned": ["pv", "load"], **forecast}, **top}
    cfg = {k: v for k, v in cfg.items() if v is not None}
    path = folder / "live.toml"
    path.write_text(tomli_w.dumps(cfg), encoding="utf-8")
    return path


def configured(cfg, t: pd.Timestamp) -> pd.DataFrame:
    """The forecast table without learning: what the configured sources say."""
    from pems.twin.inputs import build_inputs

    fc = LiveForecast(cfg, ())
    return build_inputs(cfg.house, fc.input_spec, t.floor(cfg.step), fc.h, cfg.step, required_steps=1)


def test_champions_replace_pv_and_load_and_the_gains_that_follow_the_load(home, tmp_path):
    from pems.controllers.forecast.registry import ModelRegistry
    from pems.twin import priors
    from pems.twin.model import build_model

    folder, hist, refs = home
    cfg = load_live_config(config(folder, history="history.parquet"))
    model = build_model(cfg.house)
    fc = LiveForecast(cfg, model.sym.d.names, tmp_path / "state" / "history.parquet")
    f = fc(ISSUE)
    assert f.extras["sources"] == refs
    tab, *_ = fc.table(ISSUE)
    base = configured(cfg, ISSUE)
    t0 = ISSUE.floor("15min")
    # the load: exactly the champion's median from the seeded history and the weather forecast
    reg = ModelRegistry(folder / "models")
    data = pd.concat([hist, tab[["T_out", "ghi"]]])
    want = reg.load(refs["load"]).predict(data, t0, tab.index).median
    np.testing.assert_allclose(tab["P_load"], want, rtol=1e-9)
    np.testing.assert_allclose(f.column("P_load"), want, rtol=1e-9)
    assert np.abs(want - base["P_load"]).max() > 10.0  # not the H25 profile it replaced
    # appliances' heat follows the learned load: ΔQ_int = share × electricity_to_heat × ΔP_load
    share = priors.gain_weights(cfg.house)
    dq = cfg.house.occupancy.electricity_to_heat * (tab["P_load"] - base["P_load"])
    for rid, w in share.items():
        np.testing.assert_allclose(tab[f"Q_int__{rid}"] - base[f"Q_int__{rid}"], w * dq, atol=1e-6)
    # PV: the learned median on the same weather stays close to the pvlib chain the history came
    # from, zero while the sun is down and never above the inverter's AC rating
    pv, phys = tab["P_pv"].to_numpy(), base["P_pv"].to_numpy()
    assert (pv >= 0).all() and pv.max() <= 5000.0 + 1e-6
    night = tab["ghi"].to_numpy() == 0
    assert night.sum() > 20 and np.all(pv[night] == 0)
    assert abs(pv.sum() / phys.sum() - 1) < 0.25
    # everything else is the configured table
    for c in ("T_out", "price_import", *[c for c in tab if c.startswith("I_sol__")]):
        np.testing.assert_allclose(tab[c], base[c])


def test_without_a_week_of_measured_load_the_profile_stands_until_the_loop_has_measured_one(home, tmp_path):
    from pems.twin.model import build_model

    folder, hist, refs = home
    cfg = load_live_config(config(folder))
    names = build_model(cfg.house).sym.d.names
    state = tmp_path / "state" / "history.parquet"
    fc = LiveForecast(cfg, names, state)
    f = fc(ISSUE)
    src = f.extras["sources"]
    assert src["pv"] == refs["pv"]  # the PV correction needs no history (yesterday's yield is optional)
    assert src["load"].startswith(FALLBACK) and "7 days" in src["load"]
    np.testing.assert_allclose(f.column("P_load"), configured(cfg, ISSUE)["P_load"])
    # the loop reports each metered step; the history survives a restart (the state folder)
    week = hist.loc[hist.index >= ISSUE.floor("D") - pd.Timedelta(days=7)]
    for t, row in week.iterrows():
        fc.observe(t, P_pv=row["P_pv"], P_load=row["P_load"])
    assert state.is_file()
    again = LiveForecast(cfg, names, state)
    assert again(ISSUE).extras["sources"]["load"] == refs["load"]
    kept = pd.read_parquet(state)
    np.testing.assert_allclose(kept["P_load"].reindex(week.index), week["P_load"])


def test_measured_history_keeps_its_window_and_lets_measurements_win_over_the_seed(tmp_path):
    idx = pd.date_range("2024-01-01", periods=96 * 50, freq="15min", tz="UTC", name="time")
    seed = tmp_path / "seed.csv"
    pd.DataFrame({"time": idx, "P_load": 100.0, "other": 1.0}).to_csv(seed, index=False)
    h = MeasuredHistory(tmp_path / "h.parquet", [seed], keep=pd.Timedelta(days=40))
    assert h.frame().index[0] == idx[-1] - pd.Timedelta(days=40) and "other" not in h.frame()
    h.record(idx[-1], P_load=250.0, P_pv=float("nan"))
    assert h.frame().loc[idx[-1], "P_load"] == 250.0 and np.isnan(h.frame().loc[idx[-1], "P_pv"])
    h.record(idx[-1] + pd.Timedelta(days=5), P_load=300.0)  # the window moves on
    assert h.frame().index[0] >= idx[-1] - pd.Timedelta(days=35)
    assert h.covered("P_load", idx[-1] + pd.Timedelta(minutes=15), pd.Timedelta(days=1)) == pytest.approx(1.0)
    assert h.covered("P_load", idx[-1] + pd.Timedelta(days=5, minutes=15), pd.Timedelta(days=1)) == pytest.approx(1 / 96)
    # a damaged file costs history, not the loop, and is kept aside for whoever wants to look
    (tmp_path / "h.parquet").write_bytes(b"not parquet")
    assert len(MeasuredHistory(tmp_path / "h.parquet").frame()) == 0
    aside = list(tmp_path.glob("h.parquet.unreadable-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == b"not parquet"
    # an older file: no time zone on its index, another step
    old = pd.DataFrame({"P_load": 100.0}, index=pd.date_range("2024-01-01", periods=48, freq="5min", name="time"))
    old.to_parquet(tmp_path / "old.parquet")
    h = MeasuredHistory(tmp_path / "old.parquet")
    assert str(h.frame().index.tz) == "UTC" and len(h.frame()) == 16 and (h.frame()["P_load"] == 100.0).all()


def test_an_hourly_seed_fills_every_step_and_a_whole_house_meter_leaves_out_the_heating(tmp_path):
    idx = pd.date_range("2024-01-01", periods=24 * 10, freq="h", tz="UTC")
    seed = tmp_path / "hourly.csv"
    pd.DataFrame({"time": idx, "P_load_total": 1500.0, "P_heat__a": 1000.0}).to_csv(seed, index=False)
    h = MeasuredHistory(None, [seed])
    until = idx[-1]
    assert h.covered("P_load", until, pd.Timedelta(days=7)) == pytest.approx(1.0)
    np.testing.assert_allclose(h.frame()["P_load"].dropna(), 500.0)


@pytest.mark.parametrize("keys, what", [
    ({"learned": ["pv"], "_registry": "empty"}, "no champion pv"),
    ({"learned": ["load"], "history": "missing.parquet"}, "missing.parquet"),
    ({"learned": ["wind"]}, "forecast.learned"),
    ({"learned": [], "history": "history.parquet"}, "forecast.history"),
    ({"learned": ["load"], "_modbus": None}, "[modbus]"),
    ({"learned": ["load"], "_step_minutes": 60, "_inner_seconds": 60}, "fitted on 15-minute steps"),
])
def test_a_learned_forecast_that_cannot_be_had_is_named_at_start(home, tmp_path, capsys, keys, what):
    import shutil

    folder, *_ = home
    for name in ("weather.csv", "history.parquet"):
        shutil.copy(folder / name, tmp_path / name)
    if keys.pop("_registry", None) != "empty":
        shutil.copytree(folder / "models", tmp_path / "models")
    assert main(["live", "--config", str(config(tmp_path, **keys))]) == 2
    err = capsys.readouterr().err
    assert "forecast." in err and what in err and "Traceback" not in err


def test_day_ahead_forecasts_are_kept_and_a_load_that_drifts_away_flags_a_retrain(home, tmp_path):
    """Live residuals: the median forecast issued at local midnight is kept for the coming day beside
    what the loop measures; once a day a Page–Hinkley test compares them with the MAE the champion
    was accepted with. A household that starts using 2.5 times its usual power is flagged."""
    import shutil

    from pems.controllers.forecast.registry import ModelRegistry
    from pems.live.learned import DAY_AHEAD
    from pems.twin.model import build_model

    folder, hist, refs = home
    for name in ("weather.csv", "history.parquet"):
        shutil.copy(folder / name, tmp_path / name)
    reg = ModelRegistry(tmp_path / "models")
    # the champion, accepted with a day-ahead MAE of 30 W
    ref = reg.promote(reg.register(ModelRegistry(folder / "models").load(refs["load"]), "load", "home",
                                   metrics={"mae": 30.0}).ref).ref
    cfg = load_live_config(config(tmp_path, learned=["load"], history="history.parquet"))
    state = tmp_path / "state" / "history.parquet"
    fc = LiveForecast(cfg, build_model(cfg.house).sym.d.names, state)
    midnight = pd.Timestamp("2024-04-14T22:00Z")  # 00:00 in Prague (CEST)
    f = fc(midnight)
    assert f.extras["sources"] == {"load": ref} and fc.check_drift(midnight) == {}  # no residuals yet
    kept = pd.read_parquet(state)["P_load" + DAY_AHEAD].dropna()
    assert kept.index[0] == midnight and len(kept) == 96  # the whole coming local day, from midnight
    np.testing.assert_allclose(kept, f.column("P_load")[:96])
    fc(midnight + pd.Timedelta(hours=3))  # a later issue does not replace the day-ahead forecast
    np.testing.assert_allclose(pd.read_parquet(state)["P_load" + DAY_AHEAD].dropna().loc[kept.index], kept)

    def live_day(start: pd.Timestamp, factor: float, noise_w: float, seed: int) -> None:
        day_ahead = pd.read_parquet(state)["P_load" + DAY_AHEAD]
        rng = np.random.default_rng(seed)
        for k in range(96):
            t = start + pd.Timedelta(minutes=15 * k)
            fc.observe(t, P_pv=0.0, P_load=factor * float(day_ahead[t]) + noise_w * rng.standard_normal())

    live_day(midnight, 1.0, 35.0, 0)  # a day as forecast, errors near the accepted MAE
    fc(midnight + pd.Timedelta(days=1))
    rep = fc.check_drift(midnight + pd.Timedelta(days=1))["load"]
    assert fc.check_drift(midnight + pd.Timedelta(days=1, hours=1)) == {}  # once a day
    assert rep["retrain_due"] is False and rep["n"] == 96 and rep["reference_mae"] == 30.0
    assert reg.card(ref).drift["retrain_due"] is False  # recorded on the card
    live_day(midnight + pd.Timedelta(days=1), 2.5, 35.0, 1)  # then 2.5 × what was forecast
    fc(midnight + pd.Timedelta(days=2))
    rep = fc.check_drift(midnight + pd.Timedelta(days=2))["load"]
    assert rep["retrain_due"] is True and rep["recent_mae"] > 3 * rep["reference_mae"]
    assert reg.card(ref).drift["retrain_due"] is True
    # a new champion starts its own record: it is not judged on its predecessor's errors
    new = reg.promote(reg.register(reg.load(ref), "load", "home", metrics={"mae": 30.0}).ref).ref
    again = LiveForecast(cfg, build_model(cfg.house).sym.d.names, state)
    assert again.learned.residuals("load").size == 0 and again.history.meta["P_load" + DAY_AHEAD] == new
