"""Forecasters with quantiles, residual correctors, rolling-origin backtests and a model registry.

Physics first, learning second: PV power comes from pvlib on a weather forecast and a learned
correction of the measured/physics ratio; room models from calibration are corrected by small learned
models of the heat gains they miss. Every forecaster has ``fit(history)`` and
``predict(data, issue, index)`` returning a :class:`QuantileForecast` (P10/P50/P90 by default).
"""

from pems.controllers.forecast.base import QUANTILES, Forecaster, QuantileForecast

__all__ = ["QUANTILES", "Forecaster", "QuantileForecast"]
