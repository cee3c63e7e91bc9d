"""Household electricity load (without heating): BDEW standard profile H25 or a CSV file.

``h25`` is the BDEW 2025 household standard load profile (demandlib), with its dynamisation over
the year, evaluated in the house's local time with its country's public holidays, and scaled to
``kwh_per_year``. A CSV file has columns ``time`` and ``P_load`` [W], interpolated in time.
"""

from __future__ import annotations

from pathlib import Path

import holidays as holidays_lib
import numpy as np
import pandas as pd

from pems.errors import InputError
from pems.twin.house import Site
from pems.twin.tables import read_time_csv

#: Built-in household-load profiles and what they are (``pems list``).
BUILTIN_LOADS = {
    "h25": "BDEW 2025 household standard profile (demandlib), with the country's public holidays",
}


def h25(index: pd.DatetimeIndex, step: pd.Timedelta, site: Site, kwh_per_year: float) -> pd.Series:
    """Mean household load over each step of ``index`` [W], BDEW H25 scaled to ``kwh_per_year``."""
    from demandlib import bdew

    tz = site.timezone
    start = (index[0] - pd.Timedelta(days=1)).tz_convert(tz).floor("D")
    end = (index[-1] + step + pd.Timedelta(days=1)).tz_convert(tz).ceil("D")
    local = pd.date_range(start, end, freq="15min", inclusive="left")
    hol = {}
    if site.country:
        try:
            hol = holidays_lib.country_holidays(site.country, years=range(start.year, end.year + 1))
        except NotImplementedError:
            raise InputError("house", "site.country", f"no public-holiday calendar for {site.country!r}; "
                                                      "use an ISO 3166 code such as 'CZ'") from None
    profile_kw = bdew.H25(local, holidays=dict(hol))  # kW for 1 GWh per year
    watts = pd.Series(profile_kw.to_numpy() * 1000.0 * kwh_per_year / 1e6, index=local.tz_convert("UTC"))
    return _step_means_held(watts, index, step)


def noisy_household(index: pd.DatetimeIndex, step: pd.Timedelta, site: Site, kwh_per_year: float,
                    seed: int = 0, day_to_day: float = 0.15, noise: float = 0.25, rho: float = 0.8) -> pd.Series:
    """A household a day-ahead forecast can only partly know: H25 with day-to-day and AR(1) noise [W].

    The H25 shape times a log-normal level per day (``exp N(0, day_to_day²)``) and a log-normal
    AR(1) factor (``rho`` per step, shocks of standard deviation ``noise``, centred so that the
    factor's mean is one). Reproducible with ``seed``.
    """
    rng = np.random.default_rng(seed)
    day = np.asarray((index - index[0]).days)
    level = np.exp(rng.normal(0.0, day_to_day, day.max() + 1))[day]
    ar, shocks = np.zeros(len(index)), rng.normal(0.0, noise, len(index))
    for i in range(1, len(index)):
        ar[i] = rho * ar[i - 1] + shocks[i]
    factor = level * np.exp(ar - 0.5 * noise**2 / (1 - rho**2))
    return pd.Series(h25(index, step, site, kwh_per_year).to_numpy() * factor, index=index, name="P_load")


def _step_means_held(series: pd.Series, index: pd.DatetimeIndex, step: pd.Timedelta) -> pd.Series:
    """Means over steps of a piecewise-constant series (each value held until the next stamp), exact
    for any step: the series' running integral read at the steps' bounds (no fine grid in memory)."""
    t0 = index[0]
    ts = (series.index - t0).total_seconds().to_numpy()
    vs = series.to_numpy(dtype=float)
    bounds = np.append((index - t0).total_seconds().to_numpy(), (index[-1] + step - t0).total_seconds())
    if ts[0] > bounds[0]:
        raise ValueError("the held series starts after the first step")
    cum = np.concatenate([[0.0], np.cumsum(np.diff(ts) * vs[:-1])])  # ∫ up to each stamp [W s]
    j = np.searchsorted(ts, bounds, side="right") - 1  # the value in force at each bound
    at = cum[j] + vs[j] * (bounds - ts[j])
    return pd.Series(np.diff(at) / np.diff(bounds), index=index, name="P_load")


def load_csv(path: Path) -> pd.DataFrame:
    df = read_time_csv(path, ("P_load",))
    if (df["P_load"] < 0).any():
        i = int(np.flatnonzero(df["P_load"].to_numpy() < 0)[0])
        raise InputError(path, "P_load", f"row {i + 2}: household load must be ≥ 0 W")
    return df
