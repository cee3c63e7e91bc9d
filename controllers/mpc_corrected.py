"""``mpc+correctors``: the economic MPC whose model is physics + learned residual heat gains.

Before its first step the controller learns, from the home's history, a
:class:`~pems.controllers.forecast.correctors.ResidualCorrector` (the heat per room the twin misses,
as a function of calendar, weather forecast and the sun). Every step it adds the corrector's
forecast of those gains to the internal-gain columns of the disturbance forecast and hands the
result to the plain :class:`~pems.controllers.mpc.EconomicMPC`; its Kalman filter then predicts with
the same corrected gains. The correction never touches the model's dynamics (see the corrector's
module for why it cannot destabilise them).
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pandas as pd

from pems.controllers.base import EstimatorState
from pems.controllers.forecast.correctors import CorrectorSettings, ResidualCorrector
from pems.controllers.mpc import EconomicMPC, MpcConfig
from pems.twin.model import HouseModel
from pems.twin.signals import Action, Forecast, Observation


class CorrectedMPC:
    """The ``mpc+correctors`` controller."""

    name = "mpc+correctors"
    learns_from_history = True

    def __init__(self, model: HouseModel, step_s: float = 900.0, config: MpcConfig | None = None,
                 settings: CorrectorSettings = CorrectorSettings(), corrector: ResidualCorrector | None = None) -> None:
        self.model = model
        self.step = pd.Timedelta(seconds=step_s)
        self.mpc = EconomicMPC(model, step_s, config)
        self.settings = settings
        self.corrector = corrector
        self._q = np.array([model.sym.d.names.index(f"Q_int__{r}") for r in model.rooms])
        self.learn_s = 0.0

    @property
    def events(self) -> list[dict]:
        return self.mpc.events

    @property
    def solve_s(self) -> list[float]:
        return self.mpc.solve_s

    # the live loop persists the estimate and logs the plan: both are the inner MPC's
    @property
    def estimator(self):  # noqa: ANN201 - KalmanEstimator
        return self.mpc.estimator

    def snapshot(self) -> EstimatorState | None:
        return self.mpc.snapshot()

    def resume(self, state: EstimatorState) -> bool:
        return self.mpc.resume(state)

    def plan(self) -> pd.DataFrame | None:
        """The inner MPC's plan (its disturbances include the learned gains)."""
        return self.mpc.plan()

    def learn(self, history: pd.DataFrame) -> None:
        """Fit the residual corrector on the home's history (a table of logged measurements)."""
        t0 = time.perf_counter()
        self.corrector = ResidualCorrector(self.model, self.step, self.settings).fit(history)
        self.learn_s = time.perf_counter() - t0

    def reset(self) -> None:
        self.mpc.reset()

    def corrected(self, forecast: Forecast) -> Forecast:
        """The forecast with the learned gains added to ``Q_int__<room>``."""
        if self.corrector is None:
            return forecast
        table = pd.DataFrame(forecast.d, index=forecast.index, columns=list(forecast.d_names))
        g = self.corrector.gains(table).to_numpy()
        d = np.array(forecast.d, dtype=float, copy=True)
        d[:, self._q] += g
        return dataclasses.replace(forecast, d=d)

    def act(self, observation: Observation, forecast: Forecast) -> Action:
        return self.mpc.act(observation, self.corrected(forecast))
