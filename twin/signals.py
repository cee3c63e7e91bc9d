"""What flows between a home (simulated or real) and its controller.

The same three types serve the simulated home and the live one: a controller receives an
:class:`Observation` (only what a real home measures) and a :class:`Forecast`, and returns an
:class:`Action`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class Observation:
    """What the home measures at the start of a control step.

    Powers are averages over the step that just ended (zero before the first step).
    """

    time: pd.Timestamp  # start of the coming step (UTC)
    T_room: np.ndarray  # room air temperatures, room order of the house [°C]
    soc: float | None  # battery state of charge [0–1]; None without a battery
    T_out: float  # outdoor temperature [°C]
    P_pv: float = 0.0  # [W]
    P_load: float = 0.0  # household load without heating [W]
    P_grid: float = 0.0  # import positive [W]
    P_bat: float = 0.0  # charge positive [W]
    P_heat: np.ndarray | None = None  # per room [W]
    ev_soc: np.ndarray | None = None  # each car's state of charge, as the car reports it [0–1]; None: no car
    ev_plugged: np.ndarray | None = None  # each car plugged in now [bool]
    P_ev: np.ndarray | None = None  # each car's charging over the step that ended, AC [W]


@dataclass(frozen=True)
class Action:
    """What a controller asks of the home for one control step.

    Heating is commanded in one of two ways:

    - ``heat_w``: mean electric power per room over the step [W]; the plant realises it as a
      relay duty cycle (on for ``heat_w / heater_w`` of the step);
    - ``heat_setpoint_c``: set-points for the home's own room thermostats [°C], which switch the
      relays with their hysteresis at the plant's fine step (what a Loxone home does by itself).

    The battery is commanded by ``bat_w`` (AC power, charge positive [W]) or, when ``None``, left
    to the inverter's own "load first" logic: charge from PV surplus, discharge to cover the load.
    An action with neither heating command commands no heating: the simulated home's heaters stay
    off, a live home (:class:`~pems.live.home.LiveHome`) is handed back to its own logic (what its
    safety layer asks for on a fault). ``reason`` says why an action is a fallback rather than the
    controller's plan (the live home's watchdog counts it as a solver fault).
    """

    heat_w: np.ndarray | None = None
    heat_setpoint_c: np.ndarray | None = None
    bat_w: float | None = None
    ev_w: np.ndarray | None = None  # each car's charging power asked for, AC [W]; None: a plain wallbox
    reason: str | None = None  # why this is not the controller's plan (a fallback), if it is not

    def __post_init__(self) -> None:
        if self.heat_w is not None and self.heat_setpoint_c is not None:
            raise ValueError("give heat_w or heat_setpoint_c, not both")


@dataclass(frozen=True)
class Forecast:
    """Forecasts over the controller's horizon, one row per control step from now.

    Arrays are views into the run's tables where possible (cheap to hand out every step); the
    pandas views (:attr:`disturbances`, :attr:`prices`, :attr:`comfort_low`, :attr:`comfort_high`)
    are built on first use.

    Attributes
    ----------
    index
        Start of each step (UTC).
    d
        Disturbances (H, n_d) in the order of ``d_names`` (the model's: ``T_out`` [°C],
        ``I_sol__<room>`` [W m⁻²], ``Q_int__<room>``, ``P_pv``, ``P_load`` [W], ...).
    price_import, price_export
        [currency kWh⁻¹], (H,).
    low, high
        Comfort band per step and room (H, n_rooms) [°C].
    """

    index: pd.DatetimeIndex
    d: np.ndarray
    d_names: tuple[str, ...]
    price_import: np.ndarray
    price_export: np.ndarray
    low: np.ndarray
    high: np.ndarray
    rooms: tuple[str, ...]
    extras: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.index)

    def column(self, name: str) -> np.ndarray:
        """One disturbance over the horizon, e.g. ``forecast.column("T_out")``."""
        return self.d[:, self.d_names.index(name)]

    @cached_property
    def disturbances(self) -> pd.DataFrame:
        return pd.DataFrame(self.d, index=self.index, columns=list(self.d_names))

    @cached_property
    def prices(self) -> pd.DataFrame:
        return pd.DataFrame({"price_import": self.price_import, "price_export": self.price_export},
                            index=self.index)

    @cached_property
    def comfort_low(self) -> pd.DataFrame:
        return pd.DataFrame(self.low, index=self.index, columns=list(self.rooms))

    @cached_property
    def comfort_high(self) -> pd.DataFrame:
        return pd.DataFrame(self.high, index=self.index, columns=list(self.rooms))
