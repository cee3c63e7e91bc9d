"""The rule-based baseline: what a well-tuned Loxone + Growatt home does by itself today.

- Heating: every room's own thermostat (Loxone intelligent room controller) holds a set-point
  0.5 K above the lower bound of the comfort band in force (comfort by day, eco by night), with
  ±0.25 K hysteresis (the house's ``heating.thermostat_hysteresis_k``), switching the relay at the
  plant's fine step. No look-ahead, no price awareness: the underfloor slab's lag is not anticipated.
- Battery: the inverter's "load first" mode: charge from PV surplus, discharge to cover the load,
  within its power and SOC limits; never charges from the grid.

This is the honest reference every smarter controller is measured against; it is tuned as an
installer would tune it, not weakened.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pems.twin.model import HouseModel
from pems.twin.signals import Action, Forecast, Observation

SETPOINT_ABOVE_LOW_K = 0.5


@dataclass
class RuleBasedController:
    """Per-room hysteresis thermostats and "load first" battery; see the module docstring."""

    model: HouseModel
    setpoint_above_low_k: float = SETPOINT_ABOVE_LOW_K
    name: str = "rule-based"

    def reset(self) -> None:
        """Stateless: the thermostats' relay memory lives in the home (the plant)."""

    def act(self, observation: Observation, forecast: Forecast) -> Action:
        low = forecast.comfort_low.iloc[0].to_numpy(dtype=float)
        return Action(heat_setpoint_c=low + self.setpoint_above_low_k, bat_w=None)
