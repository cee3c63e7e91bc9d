"""What a Growatt hybrid inverter does with its battery, given its holding registers.

The emulator serves the registers over Modbus (:mod:`pems.live.modbus_server`); this module is the
inverter's behaviour behind them, as a pure function of (holding registers, time, PV, load, SOC,
battery ratings) → battery power. It knows nothing of sockets, so it is tested on its own.

The modes (Growatt's "priority"), with the slot in force decided by
:meth:`~pems.live.registers.ControlState.mode_at`:

- **load first** (outside every enabled slot): PV serves the load; a PV surplus charges the battery
  (up to ``soc_max``); a deficit is covered from the battery (down to ``soc_min``); the grid takes the
  rest. Never charges from the grid.
- **battery first** (inside an enabled battery-first slot): charge at the battery-first power rate
  (% of the rated charge power) up to the battery-first stop SOC — from PV only, or from PV and the
  grid when AC charge is on. The battery does not discharge; PV left over goes to the load.
- **grid first** (inside an enabled grid-first slot): discharge at the grid-first power rate (% of
  the rated discharge power) down to the grid-first stop SOC; the surplus is exported. The battery
  does not charge.

Every power also respects the ratings (charge/discharge limits, the inverter's AC limit) and, when
the step length is given, the energy left before the SOC limit (so one step never overshoots it).
Power is at the battery's AC side, charge positive; efficiencies only enter the energy limits.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import pandas as pd

from pems.live.devices import Priority
from pems.live.registers import ControlState, RegisterMap, decode_control, load_map


@dataclass(frozen=True)
class BatteryRatings:
    """The battery and its converter as the inverter sees them."""

    capacity_wh: float  # usable energy between SOC 0 and 1 [Wh]
    max_charge_w: float  # rated charge power [W] (the 100 % of the power rate)
    max_discharge_w: float  # rated discharge power [W]
    soc_min: float = 0.1  # load first discharges down to here [0–1]
    soc_max: float = 1.0  # nothing charges past here [0–1]
    eta_charge: float = 0.95  # AC → stored energy [–]
    eta_discharge: float = 0.95  # stored energy → AC [–]
    inverter_ac_w: float = math.inf  # the hybrid inverter's AC limit for the battery path [W]

    def __post_init__(self) -> None:
        if not (self.capacity_wh > 0 and self.max_charge_w >= 0 and self.max_discharge_w >= 0):
            raise ValueError("capacity must be positive and power ratings non-negative")
        if not (0.0 <= self.soc_min <= self.soc_max <= 1.0):
            raise ValueError(f"need 0 <= soc_min <= soc_max <= 1, got {self.soc_min}, {self.soc_max}")
        if not (0 < self.eta_charge <= 1 and 0 < self.eta_discharge <= 1):
            raise ValueError("efficiencies must be in (0, 1]")


@dataclass(frozen=True)
class InverterOutput:
    """One decision of the inverter."""

    P_bat: float  # battery power at its AC side [W], charge positive
    P_grid: float  # grid power [W], import positive: P_load + P_bat − P_pv
    mode: Priority  # the priority in force


class InverterLogic:
    """A Growatt's battery behaviour from its holding registers.

    Parameters
    ----------
    regmap
        The register map whose holding registers are given (names as in the map).
    ratings
        The battery and converter ratings.
    timezone
        The inverter's clock (its slots are local times).
    clock_offset_s
        Its clock minus the true local time [s] (−3600: never switched to summer time).
    """

    def __init__(self, regmap: str | RegisterMap, ratings: BatteryRatings, timezone: str = "UTC",
                 clock_offset_s: float = 0.0) -> None:
        self.regmap = load_map(regmap)
        self.ratings = ratings
        self.timezone = timezone
        self.clock_offset_s = float(clock_offset_s)

    def local_time(self, time: pd.Timestamp) -> pd.Timestamp:
        """``time`` on the inverter's clock (local, with its offset)."""
        return pd.Timestamp(time).tz_convert(self.timezone) + pd.Timedelta(seconds=self.clock_offset_s)

    def control(self, holding: Mapping[str, float]) -> ControlState:
        """The decoded control registers (``holding``: register name → engineering value)."""
        return decode_control(self.regmap, holding)

    def mode(self, holding: Mapping[str, float], time: pd.Timestamp) -> Priority:
        """The priority in force at ``time`` (tz-aware)."""
        local = self.local_time(time)
        return self.control(holding).mode_at(local.hour * 60 + local.minute + local.second / 60)

    def step(self, holding: Mapping[str, float], time: pd.Timestamp, P_pv: float, P_load: float, soc: float,
             dt_s: float | None = None) -> InverterOutput:
        """The battery power the inverter settles on.

        Parameters
        ----------
        holding
            Holding register values by name [engineering units] (as the emulator's server holds them).
        time
            Now (tz-aware; compared with the slots in the inverter's local clock).
        P_pv
            PV AC power available [W] (≥ 0).
        P_load
            The house's consumption [W] (≥ 0).
        soc
            Battery state of charge [0–1].
        dt_s
            Length of the step this power will be held for [s]; when given, the power is limited so
            the SOC does not pass the mode's limit within the step.

        Returns
        -------
        InverterOutput
            Battery power (charge +), grid power (import +) and the mode in force.
        """
        r = self.ratings
        P_pv = max(0.0, float(P_pv)) if math.isfinite(P_pv) else 0.0
        P_load = max(0.0, float(P_load)) if math.isfinite(P_load) else 0.0
        soc = min(1.0, max(0.0, float(soc)))
        ctl = self.control(holding)
        local = self.local_time(time)
        mode = ctl.mode_at(local.hour * 60 + local.minute + local.second / 60)
        charge_cap = min(r.max_charge_w, r.inverter_ac_w)
        discharge_cap = min(r.max_discharge_w, r.inverter_ac_w)

        if mode == "battery_first":
            stop = min(r.soc_max, ctl.bat_first_stop_soc)
            want = charge_cap * min(1.0, max(0.0, ctl.bat_first_rate_pct / 100.0))
            if not ctl.ac_charge:
                want = min(want, P_pv)  # from PV only: the grid never charges the battery
            P_bat = self._charge(want, soc, stop, dt_s)
        elif mode == "grid_first":
            stop = max(r.soc_min, ctl.grid_first_stop_soc)
            want = discharge_cap * min(1.0, max(0.0, ctl.grid_first_rate_pct / 100.0))
            P_bat = -self._discharge(want, soc, stop, dt_s)
        else:  # load first
            surplus = P_pv - P_load
            if surplus >= 0:
                P_bat = self._charge(min(surplus, charge_cap), soc, r.soc_max, dt_s)
            else:
                P_bat = -self._discharge(min(-surplus, discharge_cap), soc, r.soc_min, dt_s)
        return InverterOutput(P_bat=P_bat, P_grid=P_load + P_bat - P_pv, mode=mode)

    def _charge(self, want: float, soc: float, stop: float, dt_s: float | None) -> float:
        """Charge power [W] ≤ ``want``, zero at or above ``stop``, within the energy left in ``dt_s``."""
        if want <= 0 or soc >= stop:
            return 0.0
        if dt_s:
            room_wh = (stop - soc) * self.ratings.capacity_wh
            want = min(want, room_wh * 3600.0 / (dt_s * self.ratings.eta_charge))
        return max(0.0, want)

    def _discharge(self, want: float, soc: float, stop: float, dt_s: float | None) -> float:
        """Discharge power [W] ≤ ``want``, zero at or below ``stop``, within the energy left in ``dt_s``."""
        if want <= 0 or soc <= stop:
            return 0.0
        if dt_s:
            left_wh = (soc - stop) * self.ratings.capacity_wh
            want = min(want, left_wh * 3600.0 * self.ratings.eta_discharge / dt_s)
        return max(0.0, want)
