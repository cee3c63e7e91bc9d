"""The controller interface shared by every controller, simulated or live.

A controller is built for one house model, then ``reset()`` before a run and asked once per
control step: ``act(observation, forecast) -> action``. It sees only what a real home measures
(:class:`~pems.twin.signals.Observation`) and the forecasts it is given; the KPIs are computed
by the harness from the plant's log, never by the controller.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import pandas as pd

from pems.twin.signals import Action, Forecast, Observation


@runtime_checkable
class Controller(Protocol):
    """``reset`` before a run, then one ``act`` per control step."""

    name: str

    def reset(self) -> None:
        """Forget all state from a previous run."""

    def act(self, observation: Observation, forecast: Forecast) -> Action:
        """The action for the step starting at ``observation.time``."""


# ---------------------------------------------------------------------------------------------
# what some controllers offer besides (small protocols: the runner and the live loop ask with
# isinstance, not by probing attributes)
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EstimatorState:
    """A controller's estimate of the home, kept across a restart of the live loop."""

    x: np.ndarray  # the full state (°C per node, SOC), model order
    last_d: np.ndarray  # the disturbances the next prediction starts from, model order


@runtime_checkable
class Stateful(Protocol):
    """A controller whose state estimate survives a restart (the live loop saves it every step)."""

    def snapshot(self) -> EstimatorState | None:
        """The estimate now (None: none yet)."""

    def resume(self, state: EstimatorState) -> bool:
        """Continue from a saved estimate; False if it does not fit this controller."""


@runtime_checkable
class Planner(Protocol):
    """A controller that plans ahead and can show the plan behind its last action."""

    def plan(self) -> pd.DataFrame | None:
        """One row per control step of the horizon: planned inputs and predicted states."""


@runtime_checkable
class Learner(Protocol):
    """A controller that learns from the home's history before a run (``pems simulate`` gives it the
    scenario's history, the live loop the home's)."""

    learns_from_history: bool

    def learn(self, history: pd.DataFrame) -> None:
        """Fit on a history table (the columns of docs/reference/history.md)."""


@runtime_checkable
class Privileged(Protocol):
    """A benchmark controller that may see what a real home never shows: the plant's true state
    (``privileged``: ``forecast.extras["x_true"]``) and, with ``full_horizon``, a perfect forecast of
    the whole remaining run (the oracle). The simulator's runner gives them; a live home cannot."""

    privileged: bool
    full_horizon: bool


@runtime_checkable
class Reporter(Protocol):
    """A controller that logs its own events (solver retries, fallbacks) for the run's log."""

    events: list[dict]
