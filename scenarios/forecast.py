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
from pems.twin.inputs import columns_array
from pems.twin.signals import Forecast


class ForecastProvider:
    """Slices the run's input table into forecasts, optionally with errors.

    ``learned`` (required by ``model = "learned"``): the :class:`LearnedInputs` that replace PV and
    load; :func:`forecast_provider` builds it from the scenario.
    """

    def __init__(self, spec: ForecastSpec, inputs: pd.DataFrame, d_names: tuple[str, ...],
                 comfort_low: pd.DataFrame, comfort_high: pd.DataFrame, horizon_steps: int,
                 step: pd.Timedelta, learned: LearnedInputs | None = None,
                 archived: pd.DataFrame | None = None) -> None:
        if spec.model == "learned" and learned is None:
            raise ValueError("learned forecasts need the forecasters learned before the start (forecast_provider)")
        if spec.model == "archived" and (archived is None or len(archived) != len(inputs)):
            raise ValueError("archived forecasts need the disturbances as archived, a row per row of the inputs")
        # archived: the weather's columns (outdoor temperature, window gains, PV) as the archive forecast them
        self.archived = None if spec.model != "archived" else archived[list(d_names)].to_numpy(dtype=float)
        self.learned = learned if spec.model == "learned" else None
        self.spec = spec
        self.d_names = tuple(d_names)
        self.index = inputs.index
        self.D = columns_array(inputs, self.d_names)  # the inputs' own memory where it can be
        self.price_import = inputs["price_import"].to_numpy(dtype=float)
        self.price_export = inputs["price_export"].to_numpy(dtype=float)
        self.rooms = tuple(comfort_low.columns)
        self.low, self.high = comfort_low.to_numpy(dtype=float), comfort_high.to_numpy(dtype=float)
        # Forecasts hand out views of these arrays: read-only, so no controller can alter the future.
        for a in (self.D, self.price_import, self.price_export, self.low, self.high):
            a.flags.writeable = False
        self.h = horizon_steps
        self.step = step
        self.rng = np.random.default_rng(spec.seed)
        self._irr = [i for i, c in enumerate(self.d_names) if c.startswith("I_sol__") or c == "P_pv"]
        self._gains = [i for i, c in enumerate(self.d_names) if c.startswith("Q_int__") or c == "P_load"]
        self._t_out = self.d_names.index("T_out")
        self._weather = [self._t_out, *self._irr]

    def reset(self) -> None:
        self.rng = np.random.default_rng(self.spec.seed)

    def __call__(self, k: int) -> Forecast:
        sl = slice(k, min(k + self.h, len(self.index)))
        d = self.D[sl]
        if self.spec.model == "noisy":
            d = self._perturb(d.copy())
        elif self.spec.model == "persistence":
            d = self._yesterday(k, d)
        elif self.archived is not None:  # load as the day before, the weather as archived; lead 0 is measured
            d = self._yesterday(k, d)
            d[1:, self._weather] = self.archived[sl][1:, self._weather]
        elif self.learned is not None:
            d = self.learned.replace(self.index[sl], d.copy(), self.d_names)
        return Forecast(index=self.index[sl], d=d, d_names=self.d_names,
                        price_import=self.price_import[sl], price_export=self.price_export[sl],
                        low=self.low[sl], high=self.high[sl], rooms=self.rooms)

    def perfect(self, k: int, end: int) -> Forecast:
        """The true future from step ``k`` up to (not including) ``end``: the oracle's view.

        ``extras["after"]`` holds the true day after ``end`` where the run's table has it, so that the
        oracle can leave the house in the state a controller planning on would leave it.
        """
        sl = slice(k, end)
        after = slice(end, min(end + int(round(pd.Timedelta(days=1) / self.step)), len(self.index)))
        extras = {}
        if after.stop > after.start:
            extras = {"after": Forecast(index=self.index[after], d=self.D[after], d_names=self.d_names,
                                        price_import=self.price_import[after],
                                        price_export=self.price_export[after], low=self.low[after],
                                        high=self.high[after], rooms=self.rooms)}
        return Forecast(index=self.index[sl], d=self.D[sl], d_names=self.d_names,
                        price_import=self.price_import[sl], price_export=self.price_export[sl],
                        low=self.low[sl], high=self.high[sl], rooms=self.rooms, extras=extras)

    def _yesterday(self, k: int, d: np.ndarray) -> np.ndarray:
        """Same time the day before for every lead (the first day has no yesterday: it repeats
        today's first known values, i.e. the measurement now)."""
        day = int(round(pd.Timedelta(days=1) / self.step))
        out = d.copy()
        for j in range(1, len(d)):
            src = k + j - day * -(-j // day)  # the latest observed sample at that time of day
            out[j] = self.D[src] if src >= 0 else self.D[k]
        out[0] = self.D[k]  # lead 0 is a measurement
        return out

    def _ar1(self, n: int, sigma: float) -> np.ndarray:
        """An AR(1) path of length n starting at 0 with stationary standard deviation sigma."""
        phi = float(np.exp(-self.step / pd.Timedelta(hours=self.spec.correlation_hours)))
        e = np.zeros(n)
        shocks = self.rng.standard_normal(n) * sigma * np.sqrt(1 - phi**2)
        for i in range(1, n):
            e[i] = phi * e[i - 1] + shocks[i]
        return e

    def _perturb(self, d: np.ndarray) -> np.ndarray:
        n, s = len(d), self.spec
        d[:, self._t_out] += self._ar1(n, s.sigma_T_out)
        d[:, self._irr] *= np.clip(1.0 + self._ar1(n, s.sigma_irradiance), 0.0, None)[:, None]
        # Internal gains follow the household's electricity, so they share the load's error.
        d[:, self._gains] *= np.clip(1.0 + self._ar1(n, s.sigma_load), 0.0, None)[:, None]
        return d


class LearnedInputs:
    """PV and household load forecasts from forecasters learned before a scenario's start.

    Parameters
    ----------
    house
        The scenario's house (site: time zone and holidays; PV arrays; occupancy for the gains).
    history
        The inputs table of the ``learn_days`` before the start (``P_pv``, ``P_load``, ``ghi``,
        ``T_out``): what the forecasters learn from.
    inputs
        The run's inputs table (run plus horizon): what happens, revealed to the forecasters only
        before each issue time.
    step
        Control step.
    """

    def __init__(self, house, history: pd.DataFrame, inputs: pd.DataFrame, step: pd.Timedelta) -> None:
        from pems.controllers.forecast.home import country_of
        from pems.controllers.forecast.load import LoadForecaster
        from pems.controllers.forecast.pv import PVForecaster
        from pems.twin.house import Site

        cols = ["P_pv", "P_load", "ghi", "T_out"]
        self.house, self.step = house, step
        self.table = pd.concat([history[cols], inputs[cols]])
        self.table = self.table[~self.table.index.duplicated(keep="last")]
        self.load = LoadForecaster(house.site.timezone, country_of(house.site)).fit(history[["P_load", "T_out", "ghi"]])
        self.pv = None
        if house.pv and float(history["P_pv"].max()) > 0:
            # the sun under which the twin's PV was computed (the house's own site; a built-in
            # weather set is aligned by solar time and used there)
            site = Site(**inputs.attrs["sun_site"]) if "sun_site" in inputs.attrs else house.site
            self.pv = PVForecaster(site, house.pv, house.inverter).fit(history[["P_pv", "ghi", "T_out"]])
        self._lookback = max(LoadForecaster.lookback, pd.Timedelta(days=2))

    def forecast(self, index: pd.DatetimeIndex) -> dict[str, np.ndarray]:
        """Median ``P_pv`` and ``P_load`` [W] over ``index``, issued at ``index[0]``."""
        t = index[0]
        window = self.table.loc[(self.table.index >= t - self._lookback) & (self.table.index <= index[-1])].copy()
        window.loc[window.index >= t, ["P_pv", "P_load"]] = np.nan  # nothing from the issue on is known
        out = {"P_load": np.maximum(self.load.predict(window, t, index).median, 0.0)}
        if self.pv is not None:
            out["P_pv"] = self.pv.predict(window, t, index).median
        return out

    def replace(self, index: pd.DatetimeIndex, d: np.ndarray, d_names: tuple[str, ...]) -> np.ndarray:
        """``d`` with learned PV and load, and the internal gains that follow the load."""
        from pems.twin.inputs import internal_gain_columns

        cols = self.forecast(pd.DatetimeIndex(index))
        cols |= internal_gain_columns(self.house, pd.DatetimeIndex(index), self.step, cols["P_load"])
        for name, v in cols.items():
            if name in d_names:
                d[:, d_names.index(name)] = v
        return d


def forecast_provider(sc, prep) -> ForecastProvider:
    """The controllers' forecasts of a prepared scenario (its ``[forecast]``); for ``learned``, the
    forecasters are first fitted on the inputs of the ``learn_days`` before the start."""
    spec = sc.spec.forecast
    learned = None
    if spec.model == "learned":
        from dataclasses import replace

        from pems.twin.inputs import build_inputs

        n = int(round(pd.Timedelta(days=spec.learn_days) / sc.step))
        # weather and load before the start; the forecasters do not learn prices (any tariff will do)
        history = build_inputs(sc.house, replace(sc.input_spec(), prices="flat"), sc.start - n * sc.step, n, sc.step)
        learned = LearnedInputs(sc.house, history, prep.inputs, sc.step)
    return ForecastProvider(spec, prep.inputs, prep.model.sym.d.names, prep.comfort_low, prep.comfort_high,
                            sc.horizon_steps, sc.step, learned, prep.forecast_inputs)
