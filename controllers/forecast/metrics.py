"""Scores of point and quantile forecasts.

Skill is ``1 − score_model / score_baseline`` (1 is perfect, 0 is no better than the baseline,
negative is worse). The pinball (quantile) loss of level ``q`` is ``max(q·e, (q − 1)·e)`` with
``e = y − ŷ_q``; averaged over the levels it approximates the CRPS. Interval coverage is the
share of outcomes inside [lowest, highest] quantile.
"""

from __future__ import annotations

import numpy as np

from pems.controllers.forecast.base import QuantileForecast


def _ok(y: np.ndarray, f: np.ndarray) -> np.ndarray:
    return np.isfinite(y) & np.isfinite(f)


def mae(y: np.ndarray, f: np.ndarray) -> float:
    y, f = np.asarray(y, float), np.asarray(f, float)
    ok = _ok(y, f)
    return float(np.mean(np.abs(y[ok] - f[ok]))) if ok.any() else float("nan")


def rmse(y: np.ndarray, f: np.ndarray) -> float:
    y, f = np.asarray(y, float), np.asarray(f, float)
    ok = _ok(y, f)
    return float(np.sqrt(np.mean((y[ok] - f[ok]) ** 2))) if ok.any() else float("nan")


def bias(y: np.ndarray, f: np.ndarray) -> float:
    """Mean of forecast − outcome."""
    y, f = np.asarray(y, float), np.asarray(f, float)
    ok = _ok(y, f)
    return float(np.mean(f[ok] - y[ok])) if ok.any() else float("nan")


def pinball(y: np.ndarray, f: np.ndarray, q: float) -> float:
    """Mean pinball loss of the level-``q`` forecast ``f``."""
    y, f = np.asarray(y, float), np.asarray(f, float)
    ok = _ok(y, f)
    if not ok.any():
        return float("nan")
    e = y[ok] - f[ok]
    return float(np.mean(np.maximum(q * e, (q - 1.0) * e)))


def mean_pinball(y: np.ndarray, values: np.ndarray, quantiles: tuple[float, ...]) -> float:
    """Pinball loss averaged over the levels (a deterministic forecast gets its MAE / 2)."""
    return float(np.mean([pinball(y, values[:, i], q) for i, q in enumerate(quantiles)]))


def coverage(y: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> float:
    """Share of outcomes within [lo, hi]."""
    y, lo, hi = (np.asarray(a, float) for a in (y, lo, hi))
    ok = np.isfinite(y) & np.isfinite(lo) & np.isfinite(hi)
    return float(np.mean((y[ok] >= lo[ok]) & (y[ok] <= hi[ok]))) if ok.any() else float("nan")


def skill(model_score: float, baseline_score: float) -> float:
    """``1 − model / baseline``."""
    if not np.isfinite(baseline_score) or baseline_score <= 0:
        return float("nan")
    return float(1.0 - model_score / baseline_score)


def scores(y: np.ndarray, fc: QuantileForecast | np.ndarray, quantiles: tuple[float, ...] | None = None,
           mask: np.ndarray | None = None) -> dict[str, float]:
    """MAE, RMSE and bias of the median, mean pinball loss and the outer interval's coverage.

    ``fc`` is a :class:`QuantileForecast` or an (N, n_q) array with ``quantiles``; ``mask`` keeps
    only some rows (e.g. daylight for PV).
    """
    if isinstance(fc, QuantileForecast):
        values, quantiles = fc.values, fc.quantiles
    else:
        values = np.asarray(fc, float)
        if values.ndim == 1:
            values = values[:, None]
        quantiles = quantiles or (0.5,)
    y = np.asarray(y, float)
    if mask is not None:
        y, values = y[mask], values[mask]
    mid = values[:, list(quantiles).index(0.5)] if 0.5 in quantiles else values.mean(axis=1)
    out = {"mae": mae(y, mid), "rmse": rmse(y, mid), "bias": bias(y, mid),
           "pinball": mean_pinball(y, values, quantiles), "n": int(np.isfinite(y).sum())}
    if len(quantiles) >= 2:
        out["coverage"] = coverage(y, values[:, 0], values[:, -1])
        out["nominal_coverage"] = float(quantiles[-1] - quantiles[0])
    return out
