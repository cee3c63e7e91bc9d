"""The live page's P10–P90 bands from the loop's own forecast errors, and why the plan does what it does."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pems.live.forecast_bands import MIN_SAMPLES, ForecastErrors
from pems.live.view import plan_why
from pems.twin.signals import Forecast

T0 = pd.Timestamp("2024-01-01T00:00Z")
STEP = pd.Timedelta(minutes=15)


def _feed(errors: ForecastErrors, days: float, sigma_h, rng, truth=lambda k: 500.0 + 0.0 * k, bias=-100.0):
    """A loop's steps: at each, a forecast of the load 100 W too low whose error grows with the lead
    (σ(lead h)), and the measured mean of the step before."""
    n = errors.n
    lead_h = np.arange(n) * 0.25
    for k in range(int(days * 96)):
        t = T0 + k * STEP
        f = np.array([truth(k + j) for j in range(n)]) + bias + rng.normal(0.0, sigma_h(lead_h))
        errors.record(t, {"P_load": f, "T_out": np.zeros(n)}, {"P_load": truth(k - 1), "T_out": np.nan})


def test_the_bands_are_the_errors_quantiles_by_lead_and_cover_eighty_percent():
    rng = np.random.default_rng(1)
    errors = ForecastErrors(900.0, horizon_h=24.0)
    sigma = lambda h: 20.0 + 10.0 * h  # noqa: E731 - W: worse further ahead
    _feed(errors, 7.0, sigma, rng)
    n = errors.n
    f = np.full(n, 400.0)  # today's forecast, as low as ever: the band is where the load will be
    b = errors.bands(T0 + 7 * 96 * STEP, {"P_load": f, "T_out": np.zeros(n)})
    lo, hi = b["P_load"]["p10"], b["P_load"]["p90"]
    lead = np.arange(n) * 0.25
    # the true P10–P90 of an error ~ N(0, σ) is ±1.2816 σ; the bands pool leads within 0–1, 1–3, …
    for a, z in ((0.0, 1.0), (3.0, 6.0), (12.0, 24.0)):
        sel = (lead >= a) & (lead < z)
        expect = 1.2816 * np.sqrt(np.mean(sigma(lead[sel]) ** 2))
        assert np.median(hi[sel] - 500.0) == pytest.approx(expect, rel=0.15)
        assert np.median(500.0 - lo[sel]) == pytest.approx(expect, rel=0.15)
    # a fresh week of outcomes falls inside the band about 80 % of the time
    y = 500.0 + rng.normal(0.0, sigma(lead), size=(400, n))
    assert np.mean((y >= lo) & (y <= hi)) == pytest.approx(0.8, abs=0.04)
    assert "T_out" in b and np.isnan(b["T_out"]["p10"]).all()  # no outdoor readings: no band


def test_no_band_before_enough_errors_and_a_zero_one_at_night_for_pv():
    errors = ForecastErrors(900.0, horizon_h=24.0)
    n = errors.n
    assert np.isnan(errors.bands(T0, {"P_load": np.full(n, 400.0)})["P_load"]["p90"]).all()
    rng = np.random.default_rng(2)
    sun = lambda k: max(0.0, 3000.0 * np.sin(np.pi * ((k % 96) / 4 - 7) / 10))  # noqa: E731 - W, 7:00–17:00
    for k in range(5 * 96):
        t = T0 + k * STEP
        f = np.array([sun(k + j) for j in range(n)])
        errors.record(t, {"P_pv": f * rng.uniform(0.6, 1.3)}, {"P_pv": sun(k - 1)})
    f = np.array([sun(5 * 96 + j) for j in range(n)])
    b = errors.bands(T0 + 5 * 96 * STEP, {"P_pv": f})["P_pv"]
    night, day = f <= 0, f > 500
    assert (b["p10"][night] == 0).all() and (b["p90"][night] == 0).all()  # no sun, no spread
    assert np.isfinite(b["p90"][day]).all() and (b["p10"][day] <= f[day]).all() and (b["p90"][day] >= f[day]).all()
    assert (b["p90"][day] <= 3000.0 + 1e-9).all() and (b["p10"][day] >= 0).all()  # within 0 and the largest measured
    assert min(s for s in b["samples"] if s) >= MIN_SAMPLES


def _forecast(price: np.ndarray) -> Forecast:
    n = len(price)
    idx = pd.date_range(T0, periods=n, freq="15min")
    return Forecast(idx, np.zeros((n, 1)), ("T_out",), price, np.zeros(n), np.full((n, 1), 20.0),
                    np.full((n, 1), 23.0), ("a",))


def test_why_the_plan_weighs_its_heating_and_battery_by_the_prices_of_their_hours():
    price = np.r_[np.full(16, 0.1), np.full(16, 0.5)]  # 4 cheap hours, then 4 dear ones
    idx = pd.date_range(T0, periods=32, freq="15min")
    heat = np.r_[np.full(16, 2000.0), np.zeros(16)]  # heats in the cheap hours only
    bat = np.r_[np.full(16, 1000.0), np.full(16, -1000.0)]
    why = plan_why(pd.DataFrame({"P_heat__a": heat, "P_bat": bat}, index=idx), _forecast(price))
    assert why["heating_kWh"] == pytest.approx(8.0) and why["heating_price"] == pytest.approx(0.1)
    assert why["mean_price"] == pytest.approx(0.3) and "33 % below" not in why["sentence"]
    assert "67 % below the mean price" in why["sentence"] and "moved into the cheap hours" in why["sentence"]
    assert why["charge_price"] == pytest.approx(0.1) and why["discharge_price"] == pytest.approx(0.5)
    flat = plan_why(pd.DataFrame({"P_heat__a": np.full(32, 500.0)}, index=idx), _forecast(np.full(32, 0.3)))
    assert flat["heating_price"] == pytest.approx(0.3) and "about the mean price" in flat["sentence"]
    assert plan_why(None, _forecast(price)) == {}
