"""What every forecaster offers and what it returns.

A forecaster is fitted on a history table (UTC index, one row per step, the target column plus
whatever exogenous columns it uses) and asked at an *issue time* for the steps of a target index.
``predict`` receives a table whose target values at or after the issue time are unknown (NaN): the
backtest masks them, so no forecaster can peek at what it is scored on. Exogenous columns (a weather
forecast, day-ahead prices already published) may be present over the target index.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np
import pandas as pd

#: The quantiles every forecaster returns unless told otherwise: P10, P50, P90.
QUANTILES: tuple[float, ...] = (0.1, 0.5, 0.9)


@dataclass(frozen=True)
class QuantileForecast:
    """Quantile forecasts over a target index.

    Attributes
    ----------
    index
        Start of each target step (UTC).
    quantiles
        Probability levels, increasing, e.g. ``(0.1, 0.5, 0.9)``.
    values
        (H, n_q) forecasts in the target's unit; non-decreasing along each row (no crossing).
    unit
        Unit of the target, e.g. ``"W"`` or ``"EUR/MWh"``.
    """

    index: pd.DatetimeIndex
    quantiles: tuple[float, ...]
    values: np.ndarray
    unit: str = ""
    extras: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        v = np.asarray(self.values, dtype=float)
        if v.shape != (len(self.index), len(self.quantiles)):
            raise ValueError(f"values have shape {v.shape}; expected ({len(self.index)}, {len(self.quantiles)})")
        if list(self.quantiles) != sorted(self.quantiles):
            raise ValueError("quantiles must increase")
        object.__setattr__(self, "values", np.sort(v, axis=1))  # repair any quantile crossing

    def q(self, level: float) -> np.ndarray:
        """The forecast at one probability level (must be one of :attr:`quantiles`)."""
        for i, lv in enumerate(self.quantiles):
            if abs(lv - level) < 1e-9:
                return self.values[:, i]
        raise KeyError(f"no quantile {level}; have {self.quantiles}")

    @property
    def median(self) -> np.ndarray:
        return self.q(0.5)

    def to_frame(self) -> pd.DataFrame:
        """Columns ``p10``, ``p50``, ``p90`` (one per level)."""
        return pd.DataFrame(self.values, index=self.index,
                            columns=[f"p{round(100 * q):02d}" for q in self.quantiles])

    @classmethod
    def point(cls, index: pd.DatetimeIndex, values: np.ndarray, quantiles: tuple[float, ...] = QUANTILES,
              unit: str = "") -> QuantileForecast:
        """A deterministic forecast: every quantile equal to ``values`` (baselines)."""
        v = np.asarray(values, dtype=float)
        return cls(index, quantiles, np.repeat(v[:, None], len(quantiles), axis=1), unit)


@runtime_checkable
class Forecaster(Protocol):
    """A fitted-on-history, quantile-returning forecaster.

    ``role`` names what it forecasts for the registry (``pv``, ``load``, ``price``,
    ``corrector``); ``target`` is the history column it predicts.
    """

    role: str
    target: str
    quantiles: tuple[float, ...]

    def fit(self, history: pd.DataFrame) -> Forecaster:
        """Learn from a history table (UTC index; the target and the columns the model uses)."""
        ...

    def predict(self, data: pd.DataFrame, issue: pd.Timestamp, index: pd.DatetimeIndex) -> QuantileForecast:
        """Forecast ``index`` from what is known at ``issue`` (target values ≥ issue are NaN)."""
        ...

    def describe(self) -> dict:
        """Features, settings and anything the registry should store about this model."""
        ...
