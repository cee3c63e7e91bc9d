"""Household load (without heating): quantile gradient boosting on calendar and lag features.

A household's consumption is spiky (a kettle, an oven, a washing machine) and mostly habitual
(the same hours on the same weekdays). What is predictable is the *typical* level at each hour of
the week; the spikes are what the P10–P90 band is for. So the features are robust summaries of
the recent past at the target's time of day and week, every one of them known at the issue time for
every lead:

- calendar of the target (local hour, weekday, day off/holiday, season),
- ``lag_day``: the same time on the most recent day before the issue (what persistence uses),
- ``lag_week``: the same time of week on the most recent week before the issue,
- ``hod_mean_7``/``hod_median_7``/``hod_mean_28``: mean and median at that time of day over the last
  7 (28) days before the issue,
- ``how_mean_4``: mean at that time of week over the last 4 weeks,
- ``mean_24h``, ``mean_7d``, ``q90_7d``: the level and spread of the last day and week,
- ``last``: the latest value, for the first hours after the issue,
- weather columns of the data (e.g. ``T_out``, a forecast at issue time) when present at fitting.

The target is predicted relative to the household's level (``y / mean_7d``): a household that
doubles its consumption in winter is the same household, and the trees then learn shapes instead of
one level per season. The median is trained with the pinball loss of level 0.5, which is the MAE, so
it is the MAE-optimal point forecast; the outer quantiles are conformally calibrated
(:class:`~pems.controllers.forecast.quantile.QuantileGBM`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import numpy as np
import pandas as pd

from pems.controllers.forecast.backtest import BacktestResult, origins_between
from pems.controllers.forecast.base import QUANTILES, QuantileForecast
from pems.controllers.forecast.features import calendar_features
from pems.controllers.forecast.quantile import CalendarGBMForecaster, GBMSettings

DAY = pd.Timedelta(days=1)

#: Calendar columns used as features (``hour`` is local; ``weekday`` 0 = Monday).
CALENDAR = ("hour", "hod_sin", "hod_cos", "doy_sin", "doy_cos", "weekday", "day_off")


# --------------------------------------------------------------------------------------------------
# Lag features on a regular grid (pure numpy: positions instead of timestamps, so that training on
# every issue of two years is a handful of vectorised gathers)
# --------------------------------------------------------------------------------------------------

def take(y: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """``y[pos]`` with NaN where ``pos`` is outside the array."""
    pos = np.asarray(pos)
    ok = (pos >= 0) & (pos < len(y))
    out = np.full(pos.shape, np.nan)
    out[ok] = y[pos[ok]]
    return out


def window_mean(y: np.ndarray, start: np.ndarray, stop: np.ndarray, min_share: float = 0.5) -> np.ndarray:
    """Mean of the finite ``y[start:stop]`` per row; NaN if fewer than ``min_share`` are finite."""
    c = np.concatenate([[0.0], np.cumsum(np.where(np.isfinite(y), y, 0.0))])
    n = np.concatenate([[0], np.cumsum(np.isfinite(y))])
    a = np.clip(start, 0, len(y))
    b = np.clip(stop, 0, len(y))
    cnt = n[b] - n[a]
    with np.errstate(invalid="ignore", divide="ignore"):
        m = (c[b] - c[a]) / cnt
    return np.where(cnt >= min_share * np.maximum(stop - start, 1), m, np.nan)


def periodic_stack(y: np.ndarray, first: np.ndarray, period: int, count: int) -> np.ndarray:
    """(n, count) array of ``y[first − j·period]``, j = 0 … count − 1 (NaN outside)."""
    j = np.arange(count)
    return take(y, first[:, None] - j[None, :] * period)


def nanmean_rows(a: np.ndarray) -> np.ndarray:
    n = np.isfinite(a).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, np.nansum(a, axis=1) / n, np.nan)


def nanmedian_rows(a: np.ndarray) -> np.ndarray:
    out = np.full(len(a), np.nan)
    ok = np.isfinite(a).any(axis=1)
    if ok.any():
        out[ok] = np.nanmedian(a[ok], axis=1)
    return out


def first_before(pos_t: np.ndarray, pos_i: np.ndarray, period: int) -> np.ndarray:
    """Position ``pos_t − k·period`` with the smallest ``k ≥ 1`` that lies before ``pos_i``."""
    k = np.maximum(1, (pos_t - pos_i) // period + 1)
    return pos_t - k * period


def lag_features(y: np.ndarray, pos_t: np.ndarray, pos_i: np.ndarray, spd: int) -> dict[str, np.ndarray]:
    """Seasonal lag features of targets at ``pos_t`` issued at ``pos_i`` (steps per day ``spd``).

    Only ``y[p]`` with ``p < pos_i`` is ever read, whatever ``y`` holds later: the features of a
    forecast cannot depend on what happens after its issue.
    """
    week = 7 * spd
    d1 = first_before(pos_t, pos_i, spd)
    w1 = first_before(pos_t, pos_i, week)
    hod7 = periodic_stack(y, d1, spd, 7)
    hod28 = periodic_stack(y, d1, spd, 28)
    how4 = periodic_stack(y, w1, week, 4)
    recent = periodic_stack(y, pos_i - 1, 1, week)  # the last 7 days, newest first
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(recent).sum(axis=1) >= spd
        q90 = np.full(len(pos_t), np.nan)
        if ok.any():
            q90[ok] = np.nanquantile(recent[ok], 0.9, axis=1)
    return {
        "lag_day": take(y, d1),
        "lag_week": take(y, w1),
        "hod_mean_7": nanmean_rows(hod7),
        "hod_median_7": nanmedian_rows(hod7),
        "hod_mean_28": nanmean_rows(hod28),
        "how_mean_4": nanmean_rows(how4),
        "mean_24h": window_mean(y, pos_i - spd, pos_i),
        "mean_7d": window_mean(y, pos_i - week, pos_i),
        "q90_7d": q90,
        "last": take(y, pos_i - 1),
    }


#: Lag features that are powers (divided by the level when the target is).
POWER_FEATURES = ("lag_day", "lag_week", "hod_mean_7", "hod_median_7", "hod_mean_28", "how_mean_4",
                  "mean_24h", "q90_7d", "last")


# --------------------------------------------------------------------------------------------------
# The forecaster
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LoadSettings:
    """Settings of :class:`LoadForecaster`.

    Attributes
    ----------
    issue_hours
        Local hours at which training forecasts are issued (0: day-ahead at midnight). A forecast
        issued at another hour still works (every feature is defined relative to the issue); it is
        best when the hours match how the forecaster will be used.
    horizon_h
        Training horizon [h] from each issue.
    relative
        Predict ``y / level`` (level: mean of the last 7 days) instead of ``y`` [W].
    exogenous
        Weather (or other) columns used as features at the target time when the fitting history
        holds them, e.g. a ``T_out`` forecast [°C].
    """

    issue_hours: tuple[int, ...] = (0,)
    horizon_h: float = 24.0
    relative: bool = True
    exogenous: tuple[str, ...] = ("T_out", "ghi")
    gbm: GBMSettings = GBMSettings(max_iter=100, learning_rate=0.1, max_leaf_nodes=15, min_samples_leaf=50)


class LoadForecaster(CalendarGBMForecaster):
    """Quantile forecasts of the household load without heating ``P_load`` [W].

    Parameters
    ----------
    tz
        The home's time zone (people live by local time).
    country
        Country code for public holidays (``holidays`` package).
    quantiles
        Probability levels (must include 0.5).
    settings
        :class:`LoadSettings`.

    Notes
    -----
    ``predict`` needs :attr:`lookback` of history before the issue for its lag features (28 days
    of same-hour values plus up to a day's shift); give the backtest at least that ``lookback``.
    """

    role = "load"
    target = "P_load"
    unit = "W"
    lookback = pd.Timedelta(days=36)

    def __init__(self, tz: str = "Europe/Berlin", country: str | None = "DE", quantiles: tuple[float, ...] = QUANTILES,
                 settings: LoadSettings = LoadSettings()) -> None:
        super().__init__(tz, country, quantiles, settings)
        self.exogenous: tuple[str, ...] = ()
        self.floor = 1.0  # smallest level [W] the target is divided by

    # -- feature table ------------------------------------------------------------------------------
    def _table(self, grid: pd.DatetimeIndex, y: np.ndarray, exog: pd.DataFrame, pos_t: np.ndarray,
               pos_i: np.ndarray) -> tuple[pd.DataFrame, np.ndarray]:
        """Features of (target, issue) pairs given by grid positions; also the level [W]."""
        spd = int(round(DAY / self.step))
        pos_d = first_before(pos_t, pos_i, spd)
        # Calendar only where it is needed (holiday look-ups are per date, not vectorised).
        need = np.unique(np.concatenate([pos_t, pos_d[pos_d >= 0]]))
        cal = calendar_features(grid[need], self.tz, self.country)
        at = {c: cal[c].to_numpy() for c in (*CALENDAR,)}
        f = {c: at[c][np.searchsorted(need, pos_t)] for c in CALENDAR}
        lags = lag_features(y, pos_t, pos_i, spd)
        # Was the day persistence copies a day off? (Monday after Sunday, the day after a holiday.)
        f["lag_day_off"] = np.where(pos_d >= 0, at["day_off"][np.searchsorted(need, np.maximum(pos_d, 0))], np.nan)
        f["lead_h"] = (pos_t - pos_i) * (self.step / pd.Timedelta(hours=1))
        level = lags["mean_7d"]
        fallback = np.where(np.isfinite(lags["mean_24h"]), lags["mean_24h"], self.floor)
        level = np.maximum(np.where(np.isfinite(level), level, fallback), self.floor)
        for k, v in lags.items():
            f[k] = v / level if (self.settings.relative and k in POWER_FEATURES) else v
        f["level"] = level  # absolute level: large and small households behave differently
        for c in self.exogenous:
            f[c] = exog[c].to_numpy(dtype=float)[pos_t] if c in exog else np.full(len(pos_t), np.nan)
        return pd.DataFrame(f), level

    # -- fit / predict ----------------------------------------------------------------------------------
    def fit(self, history: pd.DataFrame) -> LoadForecaster:
        """Fit on every day-ahead issue the history allows.

        Parameters
        ----------
        history
            UTC index with a regular step, ``P_load`` [W] (NaN where missing), optional weather.
        """
        if self.target not in history:
            raise ValueError(f"history has no {self.target!r} column")
        h = history.sort_index()
        if len(h) < 2:
            raise ValueError("history is empty")
        self.step = pd.Timedelta(h.index.to_series().diff().median())
        grid = self._grid(h.index)
        h = h.reindex(grid)
        y = h[self.target].to_numpy(dtype=float)
        self.exogenous = tuple(c for c in self.settings.exogenous
                               if c in h and np.isfinite(h[c].to_numpy(dtype=float)).mean() > 0.5)
        med = np.nanmedian(y) if np.isfinite(y).any() else 1.0
        self.floor = max(1.0, 0.05 * float(med))  # a near-empty week must not blow up the ratio
        horizon = int(round(pd.Timedelta(hours=self.settings.horizon_h) / self.step))
        issues = sorted(t for hr in self.settings.issue_hours
                        for t in origins_between(grid[0], grid[-1] + self.step, pd.Timedelta(0), DAY, hr, self.tz))
        pos_i = grid.searchsorted(pd.DatetimeIndex(issues))
        pos_i = pos_i[pos_i >= 7 * int(round(DAY / self.step))]  # a week of past for the level
        pos_t = (pos_i[:, None] + np.arange(horizon)[None, :]).ravel()
        pos_i = np.repeat(pos_i, horizon)
        keep = pos_t < len(grid)
        pos_t, pos_i = pos_t[keep], pos_i[keep]
        keep = np.isfinite(y[pos_t])
        pos_t, pos_i = pos_t[keep], pos_i[keep]
        X, level = self._table(grid, y, h, pos_t, pos_i)
        target = y[pos_t] / level if self.settings.relative else y[pos_t]
        self.features = list(X.columns)
        self.model.fit(X.to_numpy(), target)
        self.n_train = len(target)
        return self

    def predict(self, data: pd.DataFrame, issue: pd.Timestamp, index: pd.DatetimeIndex) -> QuantileForecast:
        """Quantiles of ``P_load`` [W] over ``index`` from what is known before ``issue``.

        Target values at or after ``issue`` in ``data`` are ignored (set to NaN here), so a caller
        cannot leak the future by accident. Weather columns may hold forecasts over ``index``.
        """
        if self.step is None:
            raise RuntimeError("fit the forecaster first")
        issue = pd.Timestamp(issue)
        index = pd.DatetimeIndex(index)
        grid = self._grid(data.index.union(index).union(pd.DatetimeIndex([issue])))
        d = data.reindex(grid)
        y = d[self.target].to_numpy(dtype=float).copy() if self.target in d else np.full(len(grid), np.nan)
        p_issue = int(grid.searchsorted(issue))
        y[p_issue:] = np.nan  # no peeking, whatever the caller passed
        pos_t = grid.searchsorted(index)
        pos_i = np.full(len(pos_t), p_issue)
        X, level = self._table(grid, y, d, pos_t, pos_i)
        q = self.model.predict(X[self.features].to_numpy())
        if self.settings.relative:
            q = q * level[:, None]
        q = np.maximum(q, 0.0)  # consumption is not negative
        return QuantileForecast(index, self.quantiles, q, self.unit,
                                extras={"level_w": float(level[0]) if len(level) else float("nan")})

    def describe(self) -> dict:
        """Features (and the exogenous columns used), settings, training size and interval calibration."""
        return {**super().describe(), "exogenous": list(self.exogenous)}


# --------------------------------------------------------------------------------------------------
# Backtest on the Konstanz households
# --------------------------------------------------------------------------------------------------

#: ``--variant`` of the load backtest.
VARIANTS: dict[str, str] = {
    "default": "calendar and lag features (what is known at midnight; no weather)",
    "pv-oracle": "plus the measured PV power at the target as a perfect PV forecast: the upper bound of "
                 "what a weather-aware forecast gains where the load follows the sun (houses 3, 4, 6)",
}


def backtest_konstanz(root=None, household: int = 1, variant: str = "default", days: int | None = None,
                      refit_days: float = 56.0, min_train_days: float = 56.0, train_days: float | None = 365.0,
                      progress: Callable[[int, int], None] | None = None) -> BacktestResult:
    """Day-ahead rolling-origin backtest of :class:`LoadForecaster` on one Konstanz household.

    Every local midnight (Europe/Berlin) the next 24 h are forecast from everything before; the
    model is refitted on the last ``train_days`` before the origin every ``refit_days`` (a
    compromise between what a deployed model would do, weekly, and compute). A year of training
    holds every season and follows a household that changes (house 5's last year is calmer than the
    years before: trained on all of them, its P10–P90 band covered 87 % instead of 80 %).
    Baselines: the same time yesterday (``persistence``) and a week before (``last_week``).

    Parameters
    ----------
    root
        The shared data folder (default ``../shared/data``).
    household
        1–6.
    variant
        A key of :data:`VARIANTS`.
    days, refit_days, min_train_days, train_days, progress
        As for :func:`backtest_load`.
    """
    from pems.controllers.forecast.datasets import konstanz_household
    from pems.errors import InputError

    if variant not in VARIANTS:
        raise InputError("command line", "--variant", f"unknown load variant {variant!r}; expected one of "
                                                      f"{', '.join(VARIANTS)}")
    raw = konstanz_household(root, household)
    data = raw[["P_load"]].copy()
    settings = LoadSettings()
    if variant == "pv-oracle":
        if "E_pv_kwh" not in raw:
            raise InputError(f"households-konstanz/{household}", "--variant",
                             "pv-oracle needs a house whose load balance includes PV (3, 4 or 6)")
        data["P_pv"] = 1000.0 * raw["E_pv_kwh"]
        settings = replace(settings, exogenous=("P_pv",))
    res = backtest_load(data, "Europe/Berlin", "DE", settings, days=days, refit_days=refit_days,
                        min_train_days=min_train_days, train_days=train_days, progress=progress)
    res.settings.update({"dataset": f"households-konstanz/power_of_residential_{household}.csv",
                         "household": household, "variant": variant, "variant_description": VARIANTS[variant]})
    return res


def backtest_load(data: pd.DataFrame, tz: str, country: str | None, settings: LoadSettings = LoadSettings(), *,
                  days: int | None = None, refit_days: float = 56.0, min_train_days: float = 56.0,
                  train_days: float | None = 365.0,
                  progress: Callable[[int, int], None] | None = None) -> BacktestResult:
    """Day-ahead rolling-origin backtest of :class:`LoadForecaster` on any load history.

    Every local midnight the next 24 h are forecast from everything before; the model is refitted
    on the last ``train_days`` before the origin every ``refit_days``. Baselines: the same time
    yesterday (``persistence``) and a week before (``last_week``).

    Parameters
    ----------
    data
        UTC index with a regular step; ``P_load`` [W] (household load without heating), optional
        weather columns named in ``settings.exogenous``.
    tz, country
        The home's time zone and public-holiday country.
    days
        Only the last ``days`` days of origins (earlier data still train the model); all by default.
    refit_days, min_train_days, train_days
        Refit period, history before the first origin, training window (``None``: all) [days].
    progress
        Called with (done, total) after each origin.
    """
    from pems.controllers.forecast.backtest import (rolling_origin, same_time_last_week, same_time_yesterday,
                                                    typical_step)

    step = typical_step(data.index)
    # The last `days` days of origins; everything before still trains the model.
    start = None if days is None else data.index[-1] + step - DAY * (days + 1)
    res = rolling_origin(lambda: LoadForecaster(tz, country, settings=settings), data, horizon=DAY, start=start,
                         issue_hour=0, tz=tz, min_train=pd.Timedelta(days=min_train_days),
                         refit_every=pd.Timedelta(days=refit_days), lookback=LoadForecaster.lookback,
                         train_window=None if train_days is None else pd.Timedelta(days=train_days),
                         baselines={"persistence": same_time_yesterday, "last_week": same_time_last_week},
                         progress=progress)
    res.settings.update({"forecaster": "LoadForecaster", "forecaster_settings": asdict(settings), "tz": tz,
                         "country": country})
    return res
