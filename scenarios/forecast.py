"""Forecast models: what controllers are told about the coming horizon.

``perfect`` hands out the truth. ``noisy`` adds AR(1) errors in the spirit of BOPTEST's forecast
uncertainty levels: for each forecast issue a fresh error path starts at zero for the current step
and relaxes towards its stationary standard deviation with the correlation time, so near-term
forecasts are good and far ones are not. Temperature errors are additive [K]; irradiance (window
gains and PV together, as they share the sky) and household load errors are multiplicative.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pems.scenarios.spec import ForecastSpec
from pems.twin.signals import Forecast


class ForecastProvider:
    """Slices the run's input table into forecasts, optionally with errors."""

    def __init__(self, spec: ForecastSpec, inputs: pd.DataFrame, d_names: tuple[str, ...],
                 comfort_low: pd.DataFrame, comfort_high: pd.DataFrame, horizon_steps: int,
                 step: pd.Timedelta) -> None:
        self.spec = spec
        self.d_names = d_names
        self.inputs = inputs
        self.low, self.high = comfort_low, comfort_high
        self.h = horizon_steps
        self.step = step
        self.rng = np.random.default_rng(spec.seed)
        self._irr_cols = [c for c in d_names if c.startswith("I_sol__")] + ["P_pv"]
        self._load_cols = ["P_load"]

    def reset(self) -> None:
        self.rng = np.random.default_rng(self.spec.seed)

    def __call__(self, k: int) -> Forecast:
        sl = slice(k, min(k + self.h, len(self.inputs)))
        dist = self.inputs.iloc[sl][list(self.d_names)].copy()
        if self.spec.model == "noisy":
            self._perturb(dist)
        return Forecast(
            disturbances=dist,
            prices=self.inputs.iloc[sl][["price_import", "price_export"]],
            comfort_low=self.low.iloc[sl], comfort_high=self.high.iloc[sl],
        )

    def _ar1(self, n: int, sigma: float) -> np.ndarray:
        """An AR(1) path of length n starting at 0 with stationary standard deviation sigma."""
        phi = float(np.exp(-self.step / pd.Timedelta(hours=self.spec.correlation_hours)))
        e = np.zeros(n)
        shocks = self.rng.standard_normal(n) * sigma * np.sqrt(1 - phi**2)
        for i in range(1, n):
            e[i] = phi * e[i - 1] + shocks[i]
        return e

    def _perturb(self, dist: pd.DataFrame) -> None:
        n, s = len(dist), self.spec
        dist["T_out"] = dist["T_out"] + self._ar1(n, s.sigma_T_out)
        irr = np.clip(1.0 + self._ar1(n, s.sigma_irradiance), 0.0, None)
        for c in self._irr_cols:
            dist[c] = dist[c] * irr
        load = np.clip(1.0 + self._ar1(n, s.sigma_load), 0.0, None)
        dist["P_load"] = dist["P_load"] * load
        # Internal gains follow the household's electricity, so they share its error.
        for c in (c for c in self.d_names if c.startswith("Q_int__")):
            dist[c] = dist[c] * load
