"""The controller interface shared by every controller, simulated or live.

A controller is built for one house model, then ``reset()`` before a run and asked once per
control step: ``act(observation, forecast) -> action``. It sees only what a real home measures
(:class:`~pems.twin.signals.Observation`) and the forecasts it is given; the KPIs are computed
by the harness from the plant's log, never by the controller.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from pems.twin.signals import Action, Forecast, Observation


@runtime_checkable
class Controller(Protocol):
    """``reset`` before a run, then one ``act`` per control step."""

    name: str

    def reset(self) -> None:
        """Forget all state from a previous run."""

    def act(self, observation: Observation, forecast: Forecast) -> Action:
        """The action for the step starting at ``observation.time``."""
