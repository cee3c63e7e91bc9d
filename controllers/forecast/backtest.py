"""Rolling-origin backtests: refit on the past, forecast the next day, score, move on.

At each origin (by default every day at local midnight) the forecaster sees only the history
before it: it is (re)fitted on rows before the origin every ``refit_every`` and asked for the next
``horizon`` with the target masked from the origin on. Baselines see the same masked table. Scores
are pooled over all origins (and per lead hour) with :func:`pems.controllers.forecast.metrics.scores`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from pems.controllers.forecast.base import Forecaster, QuantileForecast
from pems.controllers.forecast.metrics import scores, skill

#: A baseline: (target history, known up to the issue time; issue; target index) → point forecast.
Baseline = Callable[[pd.Series, pd.Timestamp, pd.DatetimeIndex], np.ndarray]
ProgressFn = Callable[[int, int], None]


def same_time_yesterday(y: pd.Series, issue: pd.Timestamp, index: pd.DatetimeIndex) -> np.ndarray:
    """The latest known value at the same time of day: ``t − k days`` with the smallest ``k ≥ 1``
    that lies before the issue time (persistence, the usual day-ahead baseline)."""
    day = pd.Timedelta(days=1)
    k = np.ceil(((index - issue) / day) + 1e-9).astype(int)
    k = np.maximum(k, 1)
    src = index - k * day
    return y.reindex(src).to_numpy(dtype=float)


def same_time_last_week(y: pd.Series, issue: pd.Timestamp, index: pd.DatetimeIndex) -> np.ndarray:
    """The value a week before each target time (weekly persistence)."""
    return y.reindex(index - pd.Timedelta(days=7)).to_numpy(dtype=float)


@dataclass
class BacktestResult:
    """Predictions of every origin and their scores."""

    role: str
    target: str
    unit: str
    quantiles: tuple[float, ...]
    predictions: pd.DataFrame  # one row per (origin, time): issue, lead_h, y, p.., <baseline>
    metrics: dict[str, dict[str, float]]  # "model" and each baseline → scores; "skill" → ...
    by_lead: pd.DataFrame  # MAE per lead hour of the model and baselines
    settings: dict = field(default_factory=dict)
    model: Any = None  # the forecaster as fitted at the last refit (what would be deployed now)
    trained_on: dict = field(default_factory=dict)  # its training data: start, end, rows, sha256

    def card_metrics(self) -> dict:
        """What a model registry card keeps of this backtest: the model's scores, its skill, the
        baselines' scores and the backtest settings."""
        return {**self.metrics["model"], "skill": self.metrics.get("skill", {}),
                "baselines": {k: v for k, v in self.metrics.items() if k not in ("model", "skill")},
                "backtest": self.settings}

    @property
    def skill_mae(self) -> dict[str, float]:
        return {k[len("mae_vs_"):]: v for k, v in self.metrics["skill"].items() if k.startswith("mae_vs_")}


def typical_step(index: pd.DatetimeIndex) -> pd.Timedelta:
    """The step of a regular index: the median spacing of its first rows (``pd.infer_freq`` returns
    an alias such as "h", which ``pd.Timedelta`` cannot read)."""
    return pd.Timedelta(pd.DatetimeIndex(index)[:50].to_series().diff().median())


def origins_between(start: pd.Timestamp, end: pd.Timestamp, horizon: pd.Timedelta, every: pd.Timedelta,
                    issue_hour: int, tz: str) -> list[pd.Timestamp]:
    """Issue times at ``issue_hour`` local time, every ``every`` (whole days), from ``start`` while
    ``origin + horizon ≤ end``; the local hour holds across daylight-saving changes."""
    n_days = max(1, int(round(every / pd.Timedelta(days=1))))
    first = pd.Timestamp(start).tz_convert(tz).tz_localize(None).normalize()
    last = pd.Timestamp(end).tz_convert(tz).tz_localize(None).normalize()
    local = pd.date_range(first, last, freq=f"{n_days}D") + pd.Timedelta(hours=issue_hour)
    times = local.tz_localize(tz, ambiguous=True, nonexistent="shift_forward").tz_convert("UTC")
    return [t for t in times if t >= start and t + horizon <= end]


def rolling_origin(make: Callable[[], Forecaster], data: pd.DataFrame, *, horizon: pd.Timedelta = pd.Timedelta(days=1),
                   every: pd.Timedelta = pd.Timedelta(days=1), issue_hour: int = 0, tz: str = "UTC",
                   min_train: pd.Timedelta = pd.Timedelta(days=28), refit_every: pd.Timedelta = pd.Timedelta(days=7),
                   train_window: pd.Timedelta | None = None, lookback: pd.Timedelta = pd.Timedelta(days=14),
                   start: pd.Timestamp | None = None, end: pd.Timestamp | None = None,
                   baselines: dict[str, Baseline] | None = None, score_mask: Callable[[pd.DataFrame], np.ndarray] | None = None,
                   progress: ProgressFn | None = None) -> BacktestResult:
    """Run a rolling-origin backtest of ``make()`` on ``data`` (UTC index, regular steps).

    Parameters
    ----------
    make
        Builds a fresh, unfitted forecaster.
    min_train
        History before the first origin.
    refit_every
        The model is refitted on everything before the origin (or the last ``train_window``) this
        often; between refits it forecasts with the last fit, as a deployed model would.
    lookback
        How much history before the origin ``predict`` receives (for lag features).
    baselines
        Name → :data:`Baseline`; default: same time yesterday ("persistence").
    score_mask
        Given the prediction table, which rows to score (e.g. daylight only for PV).
    """
    baselines = baselines if baselines is not None else {"persistence": same_time_yesterday}
    probe = make()
    target = probe.target
    data = data.sort_index()
    first = data.index[0] + min_train if start is None else max(pd.Timestamp(start), data.index[0] + min_train)
    last = data.index[-1] if end is None else min(pd.Timestamp(end), data.index[-1])
    step = typical_step(data.index)
    origins = origins_between(first, last + step, horizon, every, issue_hour, tz)
    if not origins:
        raise ValueError("the data are too short for one origin after the minimum training period")
    rows: list[pd.DataFrame] = []
    model: Forecaster | None = None
    fitted_at: pd.Timestamp | None = None
    tcol = data.columns.get_loc(target)
    for i, origin in enumerate(origins):
        if model is None or origin - fitted_at >= refit_every:
            lo = data.index[0] if train_window is None else origin - train_window
            train = data.loc[(data.index >= lo) & (data.index < origin)]
            model = make().fit(train)
            fitted_at = origin
        window = data.loc[(data.index >= origin - lookback) & (data.index < origin + horizon)].copy()
        window.iloc[window.index >= origin, tcol] = np.nan
        index = window.index[window.index >= origin]
        fc: QuantileForecast = model.predict(window, origin, index)
        known = window[target].loc[window.index < origin]
        frame = fc.to_frame()
        frame.insert(0, "y", data[target].reindex(index).to_numpy(dtype=float))
        frame.insert(0, "lead_h", (index - origin) / pd.Timedelta(hours=1))
        frame.insert(0, "issue", origin)
        for name, base in baselines.items():
            frame[name] = base(known, origin, index)
        rows.append(frame)
        if progress is not None:
            progress(i + 1, len(origins))
    pred = pd.concat(rows)
    pred.index.name = "time"
    qcols = [f"p{round(100 * q):02d}" for q in probe.quantiles]
    mask = np.ones(len(pred), bool) if score_mask is None else np.asarray(score_mask(pred), bool)
    y = pred["y"].to_numpy()
    # Score every forecast on the rows where every forecast exists (a fair comparison).
    common = mask & np.isfinite(y)
    for name in baselines:
        common &= np.isfinite(pred[name].to_numpy())
    metrics: dict[str, dict[str, float]] = {"model": scores(y, pred[qcols].to_numpy(), probe.quantiles, common)}
    sk: dict[str, float] = {}
    for name in baselines:
        metrics[name] = scores(y, pred[name].to_numpy(), (0.5,), common)
        for m in ("mae", "rmse", "pinball"):
            sk[f"{m}_vs_{name}"] = skill(metrics["model"][m], metrics[name][m])
    metrics["skill"] = sk
    lead = np.floor(pred["lead_h"].to_numpy()).astype(int)
    by = {}
    sel = pred[common].assign(_lead=lead[common])
    for col in ["p50", *baselines]:
        by[col] = sel.groupby("_lead").apply(lambda g, c=col: float(np.mean(np.abs(g["y"] - g[c]))),
                                             include_groups=False)
    by_lead = pd.DataFrame(by)
    by_lead.index.name = "lead_h"
    unit = getattr(probe, "unit", "")
    settings = {"horizon_h": horizon / pd.Timedelta(hours=1), "issue_hour_local": issue_hour, "tz": tz,
                "origins": len(origins), "first_origin": str(origins[0]), "last_origin": str(origins[-1]),
                "refit_every_days": refit_every / pd.Timedelta(days=1),
                "min_train_days": min_train / pd.Timedelta(days=1)}
    from pems.controllers.forecast.correctors import data_hash

    trained_on = {"start": str(train.index[0]), "end": str(train.index[-1]), "rows": int(len(train)),
                  "sha256": data_hash(train.select_dtypes("number"))}
    return BacktestResult(getattr(probe, "role", "?"), target, unit, probe.quantiles, pred, metrics, by_lead, settings,
                          model, trained_on)
