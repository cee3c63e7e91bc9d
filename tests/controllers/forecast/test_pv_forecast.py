"""Day-ahead PV forecaster: synthetic truth (fast) and the real NREL PVDAQ system 50 backtest (data)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from helpers import shared_data
from pems.controllers.forecast.base import Forecaster
from pems.controllers.forecast.pv import (
    NREL_SYSTEM50_SITE,
    PVForecaster,
    PVPhysics,
    PVPhysicsForecaster,
    backtest_nrel,
    backtest_pv,
    clear_sky,
    load_nrel_system50,
    nrel_weather_variant,
    weather_forecast_error,
)
from pems.twin.house import Inverter, PVArray, Site
from pems.twin.pv import pv_ac_power
from pems.twin.solar import complete_irradiance

SITE = Site(latitude=49.19, longitude=16.61, altitude_m=230, timezone="Europe/Prague", country="CZ")
TRUE_ARRAY = PVArray(kwp=5.0, tilt_deg=30.0, azimuth_deg=200.0, losses_pct=14.0)
INVERTER = Inverter(ac_limit_w=4000.0)  # below the array's peak: the truth clips
STEP = pd.Timedelta(minutes=15)


def synthetic_pv(days: int = 150, seed: int = 1, start: str = "2023-03-15") -> pd.DataFrame:
    """PV power of a known array under random cloudiness, and a perfect weather forecast.

    Each day draws a sky (clear, broken or overcast) and a within-day AR(1) clear-sky index; a
    tree east of the array shades it whenever the sun is lower than 25° in the east (azimuth
    < 130°): the measured power then is 35 % of the physics — something the pvlib chain cannot
    know and the learned correction has to find. Measurement noise: 3 % multiplicative.
    """
    rng = np.random.default_rng(seed)
    index = pd.date_range(pd.Timestamp(start, tz="UTC"), periods=days * 96, freq=STEP, name="time")
    sun = clear_sky(index, SITE, STEP)
    sky = rng.choice([0.97, 0.65, 0.25], size=days, p=[0.45, 0.35, 0.2])
    kt = np.repeat(sky, 96)
    ar = np.zeros(len(index))
    e = rng.normal(0, 0.06, len(index))
    for i in range(1, len(index)):
        ar[i] = 0.9 * ar[i - 1] + e[i]
    kt = np.clip(kt + ar * (kt < 0.9), 0.05, 1.05)
    ghi = kt * sun["ghi_clear"].to_numpy()
    hours = (index.hour + index.minute / 60).to_numpy()
    doy = index.day_of_year.to_numpy()
    t_out = 10 + 8 * np.sin(2 * np.pi * (doy - 110) / 365) + 5 * np.sin(2 * np.pi * (hours - 9) / 24)
    w = complete_irradiance(pd.DataFrame({"ghi": ghi, "T_out": t_out}, index=index), sun)
    p = pv_ac_power(w, sun, [TRUE_ARRAY], INVERTER).to_numpy()
    shaded = (sun["azimuth"].to_numpy() < 130) & (sun["sun_elevation"].to_numpy() < 25)
    p = np.where(shaded, 0.35 * p, p) * (1 + rng.normal(0, 0.03, len(p)))
    return pd.DataFrame({"P_pv": np.clip(p, 0, INVERTER.ac_limit_w), "ghi": ghi, "T_out": t_out}, index=index)


def day_index(data: pd.DataFrame, day: str) -> tuple[pd.Timestamp, pd.DatetimeIndex]:
    """Issue at local midnight of ``day`` and the 24 h after it."""
    issue = pd.Timestamp(day).tz_localize(SITE.timezone).tz_convert("UTC")
    index = data.index[(data.index >= issue) & (data.index < issue + pd.Timedelta(days=1))]
    return issue, index


def masked(data: pd.DataFrame, issue: pd.Timestamp) -> pd.DataFrame:
    w = data.copy()
    w.loc[w.index >= issue, "P_pv"] = np.nan
    return w


@pytest.fixture(scope="module")
def synthetic() -> pd.DataFrame:
    return synthetic_pv()


@pytest.fixture(scope="module")
def fitted(synthetic) -> PVForecaster:
    return PVForecaster(SITE).fit(synthetic.loc[: "2023-07-20"])


@pytest.fixture(scope="module")
def test_days(synthetic, fitted) -> pd.DataFrame:
    """Forecasts of the 20 days after the training period, one issue per local midnight."""
    rows = []
    for day in pd.date_range("2023-07-22", periods=20, freq="D"):
        issue, index = day_index(synthetic, str(day.date()))
        fc = fitted.predict(masked(synthetic, issue), issue, index).to_frame()
        fc["y"] = synthetic["P_pv"].reindex(index).to_numpy()
        fc["physics"] = fitted.physics_power(synthetic, index).to_numpy()
        rows.append(fc)
    out = pd.concat(rows)
    out["up"] = (clear_sky(pd.DatetimeIndex(out.index), SITE, STEP)["sun_elevation"] > 0).to_numpy()
    return out


def test_it_is_a_forecaster(fitted):
    assert isinstance(fitted, Forecaster)
    assert (fitted.role, fitted.target, fitted.unit) == ("pv", "P_pv", "W")
    d = fitted.describe()
    assert d["n_train"] > 1000 and "pv_fit" in d and d["ac_limit_w"] <= INVERTER.ac_limit_w + 1


def test_the_array_is_calibrated_from_the_history(fitted):
    fit = fitted.pv_fit
    # the shaded mornings pull the fitted plane a little towards the west: a loose tolerance
    assert fit.kwp_effective == pytest.approx(5.0 * 0.86, rel=0.08)
    assert fit.tilt_deg == pytest.approx(30.0, abs=6)
    assert fit.azimuth_deg == pytest.approx(200.0, abs=12)
    assert fitted.physics.ac_limit_w == pytest.approx(INVERTER.ac_limit_w, rel=0.03)


def test_the_learned_correction_finds_what_physics_misses(test_days):
    day = test_days[test_days["up"]]
    sun = clear_sky(pd.DatetimeIndex(day.index), SITE, STEP)
    shaded = ((sun["azimuth"] < 130) & (sun["sun_elevation"] < 25)).to_numpy()

    def mae(col: str, rows: np.ndarray) -> float:
        return float(np.mean(np.abs(day[col] - day["y"])[rows]))

    # the morning shade: physics cannot know it, the correction learns it
    assert mae("p50", shaded) < 0.3 * mae("physics", shaded)
    # elsewhere the physics is the truth up to 3 % noise: the correction must not spoil it
    assert mae("p50", ~shaded) < 1.15 * mae("physics", ~shaded)
    everywhere = np.ones(len(day), bool)
    assert mae("p50", everywhere) < 0.75 * mae("physics", everywhere)
    assert mae("p50", everywhere) < 0.05 * day["y"].mean()


def test_quantiles_are_ordered_and_cover_the_outcomes(test_days):
    day = test_days[test_days["up"]]
    assert (day["p10"] <= day["p50"]).all() and (day["p50"] <= day["p90"]).all()
    inside = ((day["y"] >= day["p10"]) & (day["y"] <= day["p90"])).mean()
    assert 0.65 <= inside <= 0.97
    assert (day["p90"] - day["p10"]).mean() > 0  # a real interval, not a point


def test_zero_at_night_and_never_above_the_ac_limit(test_days, fitted):
    q = test_days[["p10", "p50", "p90"]]
    assert (q.to_numpy() >= 0).all()
    assert (q.to_numpy() <= fitted.physics.ac_limit_w + 1e-9).all()
    assert (q[~test_days["up"]].to_numpy() == 0).all()
    assert test_days.loc[test_days["up"], "p50"].max() > 0.7 * INVERTER.ac_limit_w  # clear days reach it


def test_no_peeking_at_the_target_or_the_observed_weather(synthetic, fitted):
    issue, index = day_index(synthetic, "2023-08-02")
    base = fitted.predict(masked(synthetic, issue), issue, index).values
    changed = synthetic.copy()
    later = changed.index >= issue
    changed.loc[later, "P_pv"] = 1e6  # absurd future outcomes
    changed["ghi_obs"] = changed["ghi"]
    changed.loc[later, "ghi_obs"] = 0.0  # observed weather after the issue is not a forecast
    again = fitted.predict(changed, issue, index).values
    np.testing.assert_array_equal(base, again)
    # ... but the past does matter: yesterday's measured ratio is a feature
    dimmed = synthetic.copy()
    dimmed.loc[(dimmed.index >= issue - pd.Timedelta(days=1)) & (dimmed.index < issue), "P_pv"] *= 0.05
    assert not np.array_equal(base, fitted.predict(masked(dimmed, issue), issue, index).values)


def test_the_weather_forecast_drives_the_forecast(synthetic, fitted):
    issue, index = day_index(synthetic, "2023-08-03")
    clear = synthetic.copy()
    cs = clear_sky(index, SITE, STEP)["ghi_clear"].to_numpy()
    clear.loc[index, "ghi"] = cs
    dark = synthetic.copy()
    dark.loc[index, "ghi"] = 0.15 * cs
    e_clear = fitted.predict(masked(clear, issue), issue, index).median.sum()
    e_dark = fitted.predict(masked(dark, issue), issue, index).median.sum()
    assert e_dark < 0.4 * e_clear


def test_physics_alone_is_a_point_forecast_of_the_calibrated_chain(synthetic):
    phys = PVPhysicsForecaster(SITE, arrays=[TRUE_ARRAY], inverter=INVERTER).fit(synthetic.loc[: "2023-04-30"])
    issue, index = day_index(synthetic, "2023-05-10")
    fc = phys.predict(masked(synthetic, issue), issue, index)
    assert np.allclose(fc.q(0.1), fc.q(0.9))
    np.testing.assert_allclose(fc.median, phys.physics_power(synthetic, index).to_numpy())
    up = clear_sky(index, SITE, STEP)["sun_elevation"].to_numpy() > 0
    # the known array on the true weather: the truth up to the noise and the morning shade
    unshaded = up & (clear_sky(index, SITE, STEP)["azimuth"].to_numpy() > 140)
    y = synthetic["P_pv"].reindex(index).to_numpy()
    assert np.median(np.abs(fc.median[unshaded] - y[unshaded]) / np.maximum(y[unshaded], 100)) < 0.05


def test_backtest_pv_runs_with_persistence_and_physics_baselines(synthetic):
    data = synthetic.loc["2023-05-01":"2023-06-14"]
    res = backtest_pv(data, SITE, days=3, min_train=pd.Timedelta(days=40))
    assert res.settings["origins"] == 3 and set(res.metrics) >= {"model", "persistence", "physics", "skill"}
    assert res.metrics["model"]["n"] < 3 * 96  # daylight rows only
    assert res.metrics["skill"]["pinball_vs_persistence"] > 0


# ----------------------------------------------------------------------------- real data
@pytest.mark.data
def test_nrel_time_stamps_follow_the_sun_in_summer_and_winter():
    """The DST fix: on clear days the power's centroid in time sits as far from the clear-sky curve
    of the known plane (tilt 45°, azimuth 158°) in summer (daylight saving time) as in winter."""
    data = load_nrel_system50(shared_data("pv-nrel"))
    assert str(data.index.tz) == "UTC"
    assert (np.diff(data.index.as_unit("ns").asi8) == STEP.value).all()  # a regular grid
    plane = PVPhysics(NREL_SYSTEM50_SITE, [PVArray(kwp=3.0, tilt_deg=45, azimuth_deg=158)], Inverter(ac_limit_w=1e5))
    model = pd.Series(plane.clear_sky_power(pd.DatetimeIndex(data.index), STEP), index=data.index)
    day = data.index.tz_convert("America/Denver").normalize()
    offsets: dict[str, list[float]] = {"winter": [], "summer": []}
    for d, y in data["P_pv"].groupby(day):
        season = {11: "winter", 12: "winter", 1: "winter", 2: "winter", 5: "summer", 6: "summer",
                  7: "summer", 8: "summer"}.get(d.month)
        if season is None or y.isna().any() or y.max() < 1500:
            continue
        m, yv = model.reindex(y.index).to_numpy(), y.to_numpy()
        if np.corrcoef(yv, m)[0, 1] < 0.97:  # not a clear day
            continue
        t = ((y.index - y.index[0]) / pd.Timedelta(minutes=1)).to_numpy()
        offsets[season].append((yv @ t) / yv.sum() - (m @ t) / m.sum())
    # A one-hour stamp error in summer leaves almost no summer day matching the clear-sky curve.
    assert len(offsets["winter"]) >= 15 and len(offsets["summer"]) >= 40
    winter, summer = np.median(offsets["winter"]), np.median(offsets["summer"])
    assert abs(summer - winter) < 10.0  # minutes; uncorrected: ≈ 60
    assert abs(winter) < 20.0 and abs(summer) < 20.0


@pytest.mark.data
def test_the_degraded_weather_forecast_has_a_day_ahead_typical_error():
    data = load_nrel_system50(shared_data("pv-nrel"))
    deg = weather_forecast_error(nrel_weather_variant(data, "degraded"))
    assert 0.25 <= deg["ghi_rmse_rel"] <= 0.35
    assert abs(deg["ghi_bias_rel"]) < 0.05
    assert weather_forecast_error(nrel_weather_variant(data, "nsrdb"))["ghi_rmse_rel"] == 0.0


@pytest.mark.data
@pytest.mark.slow
def test_nrel_day_ahead_skill_coverage_and_correction():
    """A year of day-ahead forecasts (2013) with NSRDB irradiance as the weather forecast."""
    res = backtest_nrel(shared_data("pv-nrel"), "nsrdb", days=365)
    m = res.metrics
    assert res.settings["origins"] >= 360
    assert m["skill"]["mae_vs_persistence"] >= 0.3
    assert 0.75 <= m["model"]["coverage"] <= 0.85
    assert m["skill"]["mae_vs_physics"] > 0.03 and m["skill"]["pinball_vs_physics"] > 0.2
    # the array calibrated at each refit from the past alone; pvanalytics quotes tilt 45°, azimuth 158°
    fits = pd.DataFrame(res.settings["array_fits"])
    assert len(fits) >= 12
    assert fits["tilt_deg"].median() == pytest.approx(45, abs=5)
    assert fits["azimuth_deg"].median() == pytest.approx(158, abs=10)
