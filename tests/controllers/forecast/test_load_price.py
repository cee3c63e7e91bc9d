"""Household-load and day-ahead price forecasters: synthetic data with known answers, then the real
Konstanz households and ENTSO-E prices (``data``; skipped without ../shared/data)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from helpers import shared_data
from pems.controllers.forecast.backtest import rolling_origin, same_time_last_week, same_time_yesterday
from pems.controllers.forecast.base import Forecaster
from pems.controllers.forecast.datasets import entsoe_prices, konstanz_household, meter_energy
from pems.controllers.forecast.load import LoadForecaster, LoadSettings, backtest_konstanz
from pems.controllers.forecast.prices import (PUBLISHED, PriceForecaster, PriceSettings, backtest_entsoe,
                                              learned_mask, published_baselines)
from pems.controllers.forecast.quantile import GBMSettings
from pems.errors import InputError

TZ = "Europe/Berlin"
#: Fewer, larger boosting steps than the defaults keep the synthetic tests fast (seconds).
QUICK = GBMSettings(max_iter=60, learning_rate=0.15, max_leaf_nodes=15, min_samples_leaf=40)


def quick_load() -> LoadForecaster:
    return LoadForecaster(TZ, "DE", settings=LoadSettings(gbm=QUICK))


def quick_price() -> PriceForecaster:
    return PriceForecaster("Europe/Prague", "CZ", settings=PriceSettings(gbm=QUICK))


# -- synthetic data --------------------------------------------------------------------------------------

def synthetic_load(days: int = 120, seed: int = 1) -> pd.DataFrame:
    """A household with a habitual day (night base, morning and evening peaks; a late, long midday
    on weekends), multiplicative noise and random appliance spikes [W]."""
    rng = np.random.default_rng(seed)
    index = pd.date_range("2024-01-01", periods=days * 24, freq="1h", tz="UTC", name="time")
    local = index.tz_convert(TZ)
    h = local.hour.to_numpy()
    weekend = local.day_of_week.to_numpy() >= 5
    base = 150.0 + np.where(weekend, 0.0, 400.0 * ((h >= 6) & (h < 8)))
    base += np.where(weekend, 350.0 * ((h >= 9) & (h < 14)), 0.0)
    base += 550.0 * ((h >= 18) & (h < 22))
    y = base * rng.lognormal(0.0, 0.3, len(index))
    y += rng.binomial(1, 0.05, len(index)) * rng.uniform(500, 2500, len(index))
    return pd.DataFrame({"P_load": y}, index=index)


def synthetic_prices(days: int = 120, seed: int = 2) -> pd.DataFrame:
    """Day-ahead-like prices [EUR/MWh]: a morning and an evening peak, a solar dip, cheaper
    weekends, a slowly wandering level and hourly noise."""
    rng = np.random.default_rng(seed)
    index = pd.date_range("2024-01-01", periods=days * 24, freq="1h", tz="UTC", name="time")
    local = index.tz_convert("Europe/Prague")
    h = local.hour.to_numpy()
    shape = 20 * np.exp(-((h - 8) ** 2) / 4) + 30 * np.exp(-((h - 19) ** 2) / 5) - 25 * np.exp(-((h - 13) ** 2) / 6)
    level = 90 + np.cumsum(rng.normal(0, 0.4, len(index)))
    weekend = np.where(local.day_of_week.to_numpy() >= 5, -15.0, 0.0)
    return pd.DataFrame({"price": level + shape + weekend + rng.normal(0, 6, len(index))}, index=index)


@pytest.fixture(scope="module")
def load_data() -> pd.DataFrame:
    return synthetic_load()


@pytest.fixture(scope="module")
def fitted_load(load_data) -> LoadForecaster:
    return quick_load().fit(load_data.iloc[: 90 * 24])


# -- load forecaster ------------------------------------------------------------------------------------

def test_load_forecaster_is_a_forecaster(fitted_load):
    assert isinstance(fitted_load, Forecaster)
    d = fitted_load.describe()
    assert d["role"] == "load" and d["target"] == "P_load" and "lag_day" in d["features"]
    assert d["n_train"] > 1500


def test_fitted_forecasters_pickle_and_describe_as_json(load_data, fitted_load, price_data, fitted_price):
    """The model registry stores the fitted object (joblib) and ``describe()`` (JSON)."""
    import json
    import pickle

    for f, data, issue in ((fitted_load, load_data, pd.Timestamp("2024-04-10 22:00", tz="UTC")),
                           (fitted_price, price_data, pd.Timestamp("2024-04-10 11:00", tz="UTC"))):
        json.dumps(f.describe())
        window = data.loc[issue - f.lookback: issue + pd.Timedelta(hours=47)]
        index = window.index[window.index >= issue]
        g = pickle.loads(pickle.dumps(f))
        np.testing.assert_array_equal(g.predict(window, issue, index).values, f.predict(window, issue, index).values)


def test_load_beats_persistence_and_covers_80_percent(load_data):
    res = rolling_origin(quick_load, load_data, tz=TZ, issue_hour=0,
                         start=load_data.index[0] + pd.Timedelta(days=90), refit_every=pd.Timedelta(days=60),
                         lookback=LoadForecaster.lookback,
                         baselines={"persistence": same_time_yesterday, "last_week": same_time_last_week})
    m = res.metrics
    assert m["model"]["n"] >= 28 * 24
    # Measured 0.36: the median of a noisy habit is far better than one noisy copy of it.
    assert m["skill"]["mae_vs_persistence"] > 0.25
    assert m["skill"]["mae_vs_last_week"] > 0.25
    # Nominal 0.8; measured 0.72–0.80 over these 29 days across seeds (autocorrelated: ± 0.04).
    assert 0.70 <= m["model"]["coverage"] <= 0.90
    assert (res.predictions[["p10", "p50", "p90"]].to_numpy() >= 0).all()


def test_load_forecast_cannot_see_the_future(load_data, fitted_load):
    """Changing (or not masking) the target after the issue time changes nothing; before it, it does."""
    for issue in (pd.Timestamp("2024-04-10 22:00", tz="UTC"), pd.Timestamp("2024-04-11 08:00", tz="UTC")):
        window = load_data.loc[issue - LoadForecaster.lookback: issue + pd.Timedelta(hours=23)]
        index = window.index[window.index >= issue]
        masked = window.copy()
        masked.loc[masked.index >= issue, "P_load"] = np.nan
        changed = window.copy()
        changed.loc[changed.index >= issue, "P_load"] *= 50.0
        a = fitted_load.predict(masked, issue, index).values
        b = fitted_load.predict(window, issue, index).values  # caller forgot to mask
        c = fitted_load.predict(changed, issue, index).values
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
        past = masked.copy()
        past.loc[past.index < issue, "P_load"] *= 3.0
        assert not np.allclose(fitted_load.predict(past, issue, index).values, a)


def test_load_uses_weather_columns_when_present(load_data):
    d = load_data.iloc[: 80 * 24].copy()
    d["T_out"] = np.sin(np.arange(len(d)) / 100.0)
    tiny = LoadSettings(gbm=GBMSettings(max_iter=5, calibration_share=0.0))
    f = LoadForecaster(TZ, "DE", settings=tiny).fit(d)
    assert f.exogenous == ("T_out",) and "T_out" in f.features
    g = LoadForecaster(TZ, "DE", settings=tiny).fit(load_data.iloc[: 80 * 24])
    assert g.exogenous == ()


# -- price forecaster -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def price_data() -> pd.DataFrame:
    return synthetic_prices()


@pytest.fixture(scope="module")
def fitted_price(price_data) -> PriceForecaster:
    return quick_price().fit(price_data.iloc[: 90 * 24])


def test_published_until_follows_the_auction():
    f = PriceForecaster("Europe/Prague", "CZ")
    p = lambda s: pd.Timestamp(s, tz="Europe/Prague")  # noqa: E731
    utc = lambda s: pd.Timestamp(s, tz="Europe/Prague").tz_convert("UTC")  # noqa: E731
    assert f.published_until(p("2024-06-10 12:44")) == utc("2024-06-11 00:00")  # before: today only
    assert f.published_until(p("2024-06-10 12:45")) == utc("2024-06-12 00:00")  # after: tomorrow too
    assert f.published_until(p("2024-06-10 00:00")) == utc("2024-06-11 00:00")
    # Across the spring change the day has 23 hours: the end is a local midnight, not 48 h on.
    assert f.published_until(p("2024-03-30 13:00")) == utc("2024-04-01 00:00")
    assert f.published_until(p("2024-03-30 13:00")) == pd.Timestamp("2024-03-31 22:00", tz="UTC")


@pytest.mark.parametrize("local_issue, known_hours", [("2024-04-09 13:00", 35), ("2024-04-09 10:00", 14)])
def test_published_prices_pass_through_exactly(price_data, fitted_price, local_issue, known_hours):
    issue = pd.Timestamp(local_issue, tz="Europe/Prague").tz_convert("UTC")
    data = price_data.loc[issue - PriceForecaster.lookback: issue + pd.Timedelta(hours=47)].copy()
    data[PUBLISHED] = data["price"]
    data.loc[data.index >= issue, "price"] = np.nan  # what a backtest hands over
    index = data.index[data.index >= issue]
    fc = fitted_price.predict(data, issue, index)
    known = fc.extras["known"]
    assert known.sum() == known_hours and known[:known_hours].all()
    truth = price_data["price"].reindex(index).to_numpy()
    for j in range(len(fc.quantiles)):  # zero-width quantiles equal to the published price
        np.testing.assert_array_equal(fc.values[known, j], truth[known])
    rest = fc.values[~known]
    assert np.isfinite(rest).all() and (rest[:, -1] - rest[:, 0] > 0).all()
    # Nothing published later than the rule allows is read.
    changed = data.copy()
    changed.loc[changed.index >= fc.extras["published_until"], PUBLISHED] += 500.0
    np.testing.assert_array_equal(fitted_price.predict(changed, issue, index).values, fc.values)


def test_price_forecaster_beats_published_persistence(price_data):
    probe = PriceForecaster("Europe/Prague", "CZ")
    data = price_data.assign(**{PUBLISHED: price_data["price"]})
    res = rolling_origin(quick_price, data, horizon=pd.Timedelta(hours=48),
                         issue_hour=10, tz="Europe/Prague", start=data.index[0] + pd.Timedelta(days=90),
                         refit_every=pd.Timedelta(days=60), lookback=probe.lookback,
                         baselines=published_baselines(data["price"], probe.published_until),
                         score_mask=lambda p: learned_mask(p, probe.published_until))
    m = res.metrics
    assert m["model"]["n"] >= 25 * 34  # issued at 10:00: 34 h of every 48 h are predicted
    assert m["skill"]["mae_vs_persistence"] > 0.15  # measured 0.32
    assert 0.7 <= m["model"]["coverage"] <= 0.9


# -- loaders --------------------------------------------------------------------------------------------

def test_meter_energy_drops_gaps_resets_and_jumps():
    idx = pd.date_range("2024-01-01", periods=9, freq="1h", tz="UTC")
    r = pd.DataFrame({"m": [10.0, 10.5, 11.0, np.nan, 12.0, 12.4, 0.2, 0.5, 90.0]}, index=idx)
    e = meter_energy(r)["m"]
    # step i is the energy of the hour labelled i (reading i minus reading i−1)
    np.testing.assert_allclose(e.to_numpy(), [np.nan, 0.5, 0.5, np.nan, np.nan, 0.4, np.nan, 0.3, np.nan])


def _write_household(folder, n: int, cols: dict[str, np.ndarray], start="2024-01-01", tz_suffix="Z"):
    folder.mkdir(parents=True, exist_ok=True)
    k = len(next(iter(cols.values())))
    t = pd.date_range(start, periods=k, freq="1h")
    df = pd.DataFrame({"utc_timestamp": t.strftime("%Y-%m-%dT%H:%M:%S") + tz_suffix})
    for c, v in cols.items():
        df[f"DE_KN_residential{n}_{c}"] = v
    df.to_csv(folder / f"power_of_residential_{n}.csv", index=False)


def test_household_load_is_the_metered_balance(tmp_path):
    hours = 48
    rng = np.random.default_rng(0)
    e = {c: rng.uniform(0, s, hours) for c, s in [("grid_import", 1.0), ("pv", 3.0), ("heat_pump", 0.3), ("ev", 0.5)]}
    e["grid_export"] = 0.5 * e["pv"]
    e["grid_import"] += e["heat_pump"] + e["ev"]
    cum = {c: np.cumsum(v) for c, v in e.items()}
    _write_household(tmp_path / "households-konstanz", 4, cum)
    d = konstanz_household(tmp_path, 4)
    want = 1000 * (e["grid_import"] + e["pv"] - e["grid_export"] - e["heat_pump"] - e["ev"])
    # the first reading has no previous one; the table starts at the first hour with a load
    np.testing.assert_allclose(d["P_load"].to_numpy(), want[1:], atol=5e-3)  # readings rounded to 1 Wh
    assert d.index[0] == pd.Timestamp("2024-01-01 01:00", tz="UTC") and d.index.freq == "h"


def test_loaders_name_what_is_missing(tmp_path):
    with pytest.raises(InputError, match="household 3"):
        konstanz_household(tmp_path, 3)
    with pytest.raises(InputError, match="household"):
        konstanz_household(tmp_path, 9)
    (tmp_path / "dayahead-prices").mkdir()
    pd.DataFrame({"": ["2024-01-01 00:00:00+01:00"], "price": [1.0]}).to_csv(tmp_path / "dayahead-prices" / "CZ.csv",
                                                                              index=False)
    with pytest.raises(InputError, match="zone"):
        entsoe_prices(tmp_path, "XX")


def test_price_timestamps_become_utc(tmp_path):
    (tmp_path / "dayahead-prices").mkdir()
    stamps = ["2024-03-31 00:00:00+01:00", "2024-03-31 01:00:00+01:00", "2024-03-31 03:00:00+02:00",
              "2024-03-31 04:00:00+02:00"]
    pd.DataFrame({"": stamps, "price": [1.0, 2.0, 3.0, 4.0], "solar": 0.0}).to_csv(
        tmp_path / "dayahead-prices" / "CZ.csv", index=False)
    p = entsoe_prices(tmp_path, "CZ")
    assert list(p.index) == list(pd.date_range("2024-03-30 23:00", periods=4, freq="1h", tz="UTC"))
    assert list(p["price"]) == [1.0, 2.0, 3.0, 4.0]


# -- real data --------------------------------------------------------------------------------------------

#: Households whose day-ahead MAE skill over persistence reaches 15 % (measured over their last
#: year of origins; full spans in the report). House 6 is apart: see the test below.
HABITUAL = [1, 2, 3, 4, 5]


@pytest.mark.data
@pytest.mark.slow
@pytest.mark.parametrize("n", HABITUAL)
def test_konstanz_household_day_ahead_beats_persistence(n):
    root = shared_data("households-konstanz").parent
    res = backtest_konstanz(root, n, days=150)
    m = res.metrics
    assert m["model"]["n"] > 140 * 24
    assert m["skill"]["mae_vs_persistence"] >= 0.15, m["skill"]
    assert m["skill"]["mae_vs_last_week"] >= 0.10, m["skill"]
    assert 0.75 <= m["model"]["coverage"] <= 0.85, m["model"]


@pytest.mark.data
@pytest.mark.slow
def test_konstanz_household_6_follows_the_sun():
    """House 6's metered balance holds an unmetered consumer that takes the PV surplus up to ≈ 4.4 kW
    (a battery or a heating rod): its 'load' is mostly tomorrow's sunshine. Persistence copies
    yesterday's sun, which no calendar model can beat by much; with a PV forecast (here the measured
    PV as an oracle) the same model does."""
    root = shared_data("households-konstanz").parent
    plain = backtest_konstanz(root, 6, days=120)
    oracle = backtest_konstanz(root, 6, days=120, variant="pv-oracle")
    assert plain.metrics["skill"]["mae_vs_persistence"] > 0.0
    assert oracle.metrics["skill"]["mae_vs_persistence"] >= 0.4
    assert 0.75 <= oracle.metrics["model"]["coverage"] <= 0.85


@pytest.mark.data
@pytest.mark.slow
def test_cz_day_ahead_price_forecast():
    root = shared_data("dayahead-prices").parent
    res = backtest_entsoe(root, "CZ", days=365)
    m = res.metrics
    assert res.settings["passed_through_max_abs_error"] == 0.0
    assert m["skill"]["mae_vs_persistence"] >= 0.15, m["skill"]
    assert m["skill"]["mae_vs_last_week"] >= 0.15, m["skill"]
    assert 0.75 <= m["model"]["coverage"] <= 0.85, m["model"]
