"""Gradient-boosted quantile regression with conformal interval calibration.

One :class:`~sklearn.ensemble.HistGradientBoostingRegressor` per level with the quantile (pinball)
loss. Quantile regressors are typically over-confident out of sample, so the outer interval is
calibrated as in conformalised quantile regression (Romano et al., 2019): the last
``calibration_share`` of the training rows (in time order: the most recent) are held out, the
conformity scores ``max(lo − y, y − hi)`` of the nominal interval are computed on them, and the
interval is widened (or narrowed) by their finite-sample quantile. The final models are then refitted
on all rows and keep that correction. Optional ``scale``: a per-row positive scale (e.g. the clear-sky
power) by which scores are normalised, so the correction is relative where the spread is.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.ensemble import HistGradientBoostingRegressor

from pems.controllers.forecast.base import QUANTILES


@dataclass(frozen=True)
class GBMSettings:
    """Boosting settings; the defaults are small and regularised (forecasting data are noisy)."""

    max_iter: int = 300
    learning_rate: float = 0.05
    max_leaf_nodes: int = 15
    min_samples_leaf: int = 40
    l2_regularization: float = 1.0
    early_stopping: bool = False
    calibration_share: float = 0.2  # most recent rows held out for conformal calibration
    random_state: int = 0


class QuantileGBM:
    """Quantile regression by gradient boosting, one model per level, conformally calibrated."""

    def __init__(self, quantiles: tuple[float, ...] = QUANTILES, settings: GBMSettings = GBMSettings(),
                 categorical: list[int] | None = None) -> None:
        if 0.5 not in quantiles:
            raise ValueError("quantiles must include the median 0.5")
        self.quantiles = tuple(quantiles)
        self.settings = settings
        self.categorical = categorical
        self.models: list[HistGradientBoostingRegressor] = []
        self.correction = 0.0  # conformal widening of the outer interval (in scaled units)
        self.calibration: dict[str, float] = {}

    def _new(self, q: float) -> HistGradientBoostingRegressor:
        s = self.settings
        return HistGradientBoostingRegressor(
            loss="quantile", quantile=q, max_iter=s.max_iter, learning_rate=s.learning_rate,
            max_leaf_nodes=s.max_leaf_nodes, min_samples_leaf=s.min_samples_leaf,
            l2_regularization=s.l2_regularization, early_stopping=s.early_stopping,
            random_state=s.random_state, categorical_features=self.categorical)

    def _fit_all(self, X: np.ndarray, y: np.ndarray) -> list[HistGradientBoostingRegressor]:
        return [self._new(q).fit(X, y) for q in self.quantiles]

    @staticmethod
    def _raw(models, X: np.ndarray) -> np.ndarray:
        return np.sort(np.column_stack([m.predict(X) for m in models]), axis=1)

    def fit(self, X: np.ndarray, y: np.ndarray, scale: np.ndarray | None = None) -> QuantileGBM:
        """Fit on rows in time order (the last ones calibrate the interval)."""
        X, y = np.asarray(X, float), np.asarray(y, float)
        ok = np.isfinite(y)
        X, y = X[ok], y[ok]
        sc = np.ones(len(y)) if scale is None else np.maximum(np.asarray(scale, float)[ok], 1e-9)
        if len(y) < 50:
            raise ValueError(f"only {len(y)} training rows; need at least 50")
        n_cal = int(len(y) * self.settings.calibration_share)
        self.correction = 0.0
        if len(self.quantiles) >= 2 and n_cal >= 30:
            head = self._fit_all(X[:-n_cal], y[:-n_cal])
            pred = self._raw(head, X[-n_cal:])
            lo, hi = pred[:, 0], pred[:, -1]
            yc, s = y[-n_cal:], sc[-n_cal:]
            score = np.maximum(lo - yc, yc - hi) / s
            nominal = self.quantiles[-1] - self.quantiles[0]
            level = min(1.0, np.ceil((n_cal + 1) * nominal) / n_cal)
            self.correction = float(np.quantile(score, level))
            self.calibration = {"n": n_cal, "raw_coverage": float(np.mean((yc >= lo) & (yc <= hi))),
                                "correction": self.correction}
        self.models = self._fit_all(X, y)
        return self

    def predict(self, X: np.ndarray, scale: np.ndarray | None = None) -> np.ndarray:
        """(n, n_q) quantiles, the outer ones widened by the conformal correction, sorted."""
        out = self._raw(self.models, np.asarray(X, float))
        if self.correction and len(self.quantiles) >= 2:
            s = np.ones(len(out)) if scale is None else np.maximum(np.asarray(scale, float), 1e-9)
            out[:, 0] -= self.correction * s
            out[:, -1] += self.correction * s
            mid = list(self.quantiles).index(0.5)
            # A negative correction must not push the outer quantiles past the median.
            out[:, 0] = np.minimum(out[:, 0], out[:, mid])
            out[:, -1] = np.maximum(out[:, -1], out[:, mid])
        return np.sort(out, axis=1)


class CalendarGBMForecaster:
    """What the gradient-boosted forecasters on a regular grid share (load, prices): time zone and
    holiday calendar, the quantile model, the grid they work on and their :meth:`describe`."""

    role: str
    target: str
    unit: str

    def __init__(self, tz: str, country: str | None, quantiles: tuple[float, ...], settings: Any) -> None:
        self.tz = tz
        self.country = country
        self.quantiles = tuple(quantiles)
        self.settings = settings
        self.model = QuantileGBM(self.quantiles, settings.gbm)
        self.step: pd.Timedelta | None = None
        self.features: list[str] = []
        self.n_train = 0

    def _grid(self, index: pd.DatetimeIndex) -> pd.DatetimeIndex:
        return pd.date_range(index.min(), index.max(), freq=self.step, name="time")

    def describe(self) -> dict:
        """Features, settings, training size and interval calibration."""
        return {"role": self.role, "target": self.target, "unit": self.unit, "model": "QuantileGBM",
                "tz": self.tz, "country": self.country, "quantiles": list(self.quantiles),
                "features": list(self.features), "settings": asdict(self.settings), "n_train": self.n_train,
                "calibration": dict(self.model.calibration),
                "step_s": None if self.step is None else self.step.total_seconds()}
