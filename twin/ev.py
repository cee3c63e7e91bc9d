"""The family's car: its house-file table and its week, as per-step signals of the model's grid.

A car is an energy store that is connected only while plugged in. What the twin needs of it, step by
step (:func:`ev_signals`):

- ``plugged``: the share of the step the car is at home and plugged in [0–1];
- ``drive_wh``: the energy its trips took out of its battery, put at the step it comes home in, or
  whose end it comes home at (its state of charge does not change while it is away; it arrives
  with less, and the next step starts knowing it) [Wh];
- ``need_wh``: at each step it leaves in, the energy its battery should hold then (the target
  state of charge × capacity), 0 at every other step [Wh].

The week is a list of trips (``[[ev.trips]]``: the days, the local time it leaves and the time it is
back, the energy the trip uses), in the house's local time (daylight saving time included: a trip
at 07:00 leaves at 07:00 on the clock all year). A calendar file may replace the week's trips on
the days it names (``time_out, time_back, drive_kwh`` rows: a holiday trip, a day at home). The
energy a trip uses is either given (``drive_kwh``) or drawn, per trip, from a normal distribution
of the state of charge on arrival (``arrival_soc_mean``, ``arrival_soc_sd``) with a seeded random
generator, so a scenario is reproducible.

The charger's limits (:class:`Charger`): the minimum and maximum current per phase and the number of
phases (with ``phase_switching``, 1 or 3 as the power asks: the range between the one-phase maximum
and the three-phase minimum is then reachable too). A charger cannot charge below its minimum
current: the feasible powers are 0 and the intervals :meth:`Charger.power_ranges` gives.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, model_validator

Day = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
DAYS: tuple[Day, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
HHMM = Annotated[str, Field(pattern=r"^([01]\d|2[0-3]):[0-5]\d$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class Charger(_Strict):
    """The wallbox: what currents it can set, on how many phases."""

    min_current_a: Annotated[float, Field(gt=0, le=80)] = 6.0
    """Lowest current it charges with (IEC 61851: 6 A); below it, it does not charge [A]."""
    max_current_a: Annotated[float, Field(gt=0, le=80)] = 16.0
    """Highest current per phase [A]."""
    phases: Literal[1, 3] = 3
    """Phases it charges on."""
    phase_switching: bool = False
    """It can switch between one and three phases as the power asks (evcc's 1p3p)."""
    voltage_v: Annotated[float, Field(gt=100, le=260)] = 230.0
    """Phase voltage [V]."""

    @model_validator(mode="after")
    def _order(self) -> Charger:
        if self.min_current_a > self.max_current_a:
            raise ValueError(f"min_current_a = {self.min_current_a:g} A is above max_current_a = "
                             f"{self.max_current_a:g} A")
        return self

    def power_ranges(self) -> list[tuple[float, float]]:
        """The intervals of power it can charge with [W], besides 0 (sorted, disjoint or merged)."""
        phases = (1, 3) if self.phase_switching else (self.phases,)
        ranges = sorted((p * self.voltage_v * self.min_current_a, p * self.voltage_v * self.max_current_a)
                        for p in phases)
        merged: list[tuple[float, float]] = []
        for lo, hi in ranges:
            if merged and lo <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(hi, merged[-1][1]))
            else:
                merged.append((lo, hi))
        return merged

    @property
    def min_w(self) -> float:
        """The least power it charges with [W] (0 aside)."""
        return self.power_ranges()[0][0]

    @property
    def max_w(self) -> float:
        """The most power it charges with [W]."""
        return self.power_ranges()[-1][1]

    def feasible(self, power_w: float) -> float:
        """The power it actually charges with when asked for ``power_w`` [W]: the largest feasible
        power not above it (0 below the minimum), never above its maximum."""
        p = float(power_w) if np.isfinite(power_w) else 0.0
        best = 0.0
        for lo, hi in self.power_ranges():
            if p >= lo:
                best = min(p, hi)
        return best


    def setting(self, power_w: float, phases_now: int | None = None) -> tuple[int, float]:
        """The phases and current per phase [A] that give ``power_w`` (made :meth:`feasible` first):
        one phase where switching allows and one phase reaches it, else the wallbox's phases; with
        ``phases_now``, those phases wherever they can give it (a switch interrupts the charging for a
        minute and wears the contactor: no switching back and forth about 3.7 kW). ``(phases, 0.0)``
        for no charging."""
        p = self.feasible(power_w)
        phases = self.phases
        if self.phase_switching:
            phases = 1 if p <= self.voltage_v * self.max_current_a + 1e-9 else 3
            if phases_now in (1, 3) and phases_now != phases and p > 0:
                lo, hi = phases_now * self.voltage_v * self.min_current_a, phases_now * self.voltage_v * self.max_current_a
                if lo - 1e-9 <= p <= hi + 1e-9:
                    phases = phases_now
        if p <= 0:
            return phases, 0.0
        amps = min(max(p / (phases * self.voltage_v), self.min_current_a), self.max_current_a)
        return phases, amps


def quantised(planned_w: float, charger: Charger, carry_wh: float, step_h: float,
              share: float = 1.0) -> tuple[float, float]:
    """A planned mean power made one the charger can give, the energy carried between steps so that
    none is lost (sigma-delta): below the minimum current it waits and carries the plan's energy on,
    once enough has gathered it charges at the minimum. ``share`` is the part of the step the car is
    plugged in: the plan's mean over the step is charged in that part, at ``mean / share`` (the
    plant charges at the commanded power while plugged in). Returns (power to command [W], carry [Wh])."""
    want = max(planned_w, 0.0) + carry_wh / step_h  # mean over the step [W]
    share = min(max(share, 1e-6), 1.0)
    cmd = charger.feasible(want / share)
    got = cmd * share
    return cmd, max(want - got, 0.0) * step_h if got < want else 0.0


def car_commands(cars: Sequence[Ev], planned_w: np.ndarray, plugged: np.ndarray | None, carry_wh: np.ndarray,
                 step_h: float, leaving: np.ndarray | None = None, share: np.ndarray | None = None) -> np.ndarray:
    """Each car's command from a plan's mean powers (:func:`quantised`, ``carry_wh`` updated in place;
    a car away for the whole step gets 0 and its carry is dropped). ``share``: the part of this step
    each car is plugged in (the forecast's, which live follows the measured plug): where given it says
    whether a car is home, else ``plugged`` (the plug seen now) does. In a car's last step home (``leaving``) what is
    still owed is given, at least at the minimum current: none of the plan's energy is lost."""
    out = np.zeros(len(cars))
    for j, car in enumerate(cars):
        # the plugged share decides where given (a car coming home during the step is commanded: it
        # charges on arrival); else the plug seen now
        f = 1.0 if share is None else min(max(float(share[j]), 0.0), 1.0)
        away = f <= 0 if share is not None else (plugged is not None and not plugged[j])
        if away:
            carry_wh[j] = 0.0
            continue
        out[j], carry_wh[j] = quantised(float(planned_w[j]), car.charger, float(carry_wh[j]), step_h, f)
        if leaving is not None and leaving[j] and carry_wh[j] > 0:
            out[j] = max(car.charger.feasible(out[j] + carry_wh[j] / step_h / f), car.charger.min_w)
            carry_wh[j] = 0.0
    return out


def plugged_share(cars: Sequence[Ev], fc) -> np.ndarray:
    """The part of the forecast's first step each car is plugged in [0–1]."""
    return np.array([float(fc.column(f"ev_plugged__{car.id}")[0]) for car in cars]) if len(fc) else np.ones(len(cars))


def leaving(cars: Sequence[Ev], fc) -> np.ndarray:
    """Whether each car leaves within the next step (the forecast's plugged share drops below 1)."""
    out = np.zeros(len(cars), dtype=bool)
    if len(fc) < 2:
        return out
    for j, car in enumerate(cars):
        out[j] = fc.column(f"ev_plugged__{car.id}")[1] < 1.0
    return out


def with_measured_plugs(cars: Sequence[Ev], fc, plugged: np.ndarray | None):
    """``fc`` with each car's plug as measured now where it contradicts the schedule (live).

    A car plugged in that the schedule has away is taken to stay until the schedule's next
    departure (the trip's energy is then already in the SOC it reports); a car away that the schedule has at home is taken to be away until then (it is
    planned again the step it is plugged in). Unknown plugs (``None``, NaN) leave the schedule.
    """
    if plugged is None or not cars or len(fc) == 0:
        return fc
    d = None
    for j, car in enumerate(cars):
        seen = plugged[j]
        if seen is None or (isinstance(seen, float) and not np.isfinite(seen)):
            continue
        i_plug = fc.d_names.index(f"ev_plugged__{car.id}")
        col = fc.d[:, i_plug]
        if bool(seen) == (col[0] > 0.5):
            continue
        need = fc.d[:, fc.d_names.index(f"ev_need_wh__{car.id}")]
        ahead = np.flatnonzero(need > 0)
        until = int(ahead[0]) + 1 if len(ahead) else len(fc)  # through the departure's own step
        if d is None:
            d = fc.d.copy()
        d[:until, i_plug] = 1.0 if seen else 0.0
        if seen:  # it leaves during the departure step as the schedule says
            d[until - 1, i_plug] = min(1.0, col[until - 1]) if len(ahead) else 1.0
            # home early: the trip's energy is in the SOC it reports, not still to come at its arrival
            d[:until, fc.d_names.index(f"ev_drive_w__{car.id}")] = 0.0
    return fc if d is None else replace(fc, d=d)


class Trip(_Strict):
    """One trip of the week: it leaves at ``out`` and is back at ``back`` (local time) on ``days``."""

    days: list[Day] = Field(min_length=1)
    """The days it leaves on."""
    out: HHMM
    """Local time it leaves (unplugged)."""
    back: HHMM
    """Local time it is back and plugged in (the next day when not after ``out``)."""
    drive_kwh: Annotated[float, Field(ge=0)] | None = None
    """Energy the trip takes out of the battery [kWh] (not set: drawn from the arrival SOC distribution)."""


class Ev(_Strict):
    """An electric car charged at home (``[[ev]]`` in the house file)."""

    id: str = "car"
    """Its name (topics, columns: ``ev_soc__<id>``)."""
    capacity_kwh: Annotated[float, Field(gt=0, le=250)]
    """Usable battery energy [kWh]."""
    charger: Charger = Field(default_factory=Charger)
    """The wallbox."""
    eta_charge: Annotated[float, Field(gt=0.5, le=1)] = 0.9
    """Charging efficiency, AC → battery [-]."""
    target_soc: Annotated[float, Field(gt=0, le=1)] = 0.8
    """State of charge wanted at every departure [-]."""
    arrival_soc_mean: Annotated[float, Field(ge=0, le=1)] = 0.45
    """Mean state of charge on arrival, for trips without ``drive_kwh`` [-]."""
    arrival_soc_sd: Annotated[float, Field(ge=0, le=0.5)] = 0.1
    """Its standard deviation [-]."""
    trips: list[Trip] = Field(default_factory=list)
    """The week's trips (none: the car stays home)."""
    calendar: str | None = None
    """A CSV of trips (``time_out, time_back[, drive_kwh]``, local times) that replace the week's on the days it names."""

    @property
    def usable_wh(self) -> float:
        return self.capacity_kwh * 1000.0

    def ac_wh(self, soc_from: float, soc_to: float) -> float:
        """AC energy the charger draws to take the car from ``soc_from`` to ``soc_to`` [Wh] (0 if not up)."""
        return max(float(soc_to) - float(soc_from), 0.0) * self.usable_wh / self.eta_charge


def _local(ts: pd.Timestamp, tz: str) -> pd.Timestamp:
    return ts.tz_localize(tz, ambiguous=False, nonexistent="shift_forward") if ts.tzinfo is None else ts.tz_convert(tz)


def trips_between(ev: Ev, start: pd.Timestamp, end: pd.Timestamp, tz: str,
                  calendar: pd.DataFrame | None = None) -> list[tuple[pd.Timestamp, pd.Timestamp, float | None]]:
    """The car's trips that overlap ``[start, end)`` (UTC): (leaves, back, drive kWh or None), UTC,
    the week's pattern on every day no calendar trip covers, the calendar's trips on the days they do."""
    first = start.tz_convert(tz).normalize().tz_localize(None) - pd.Timedelta(days=1)
    last = end.tz_convert(tz).normalize().tz_localize(None) + pd.Timedelta(days=1)
    cal_days: set = set()
    out: list[tuple[pd.Timestamp, pd.Timestamp, float | None]] = []
    if calendar is not None and len(calendar):
        for _, row in calendar.iterrows():
            t_out, t_back = _local(pd.Timestamp(row["time_out"]), tz), _local(pd.Timestamp(row["time_back"]), tz)
            d = t_out.normalize()
            while d <= t_back:  # every day it covers: the week's trips of those days do not happen
                cal_days.add(d.date())
                d += pd.Timedelta(days=1)
            kwh = row.get("drive_kwh")
            out.append((t_out.tz_convert("UTC"), t_back.tz_convert("UTC"),
                        None if kwh is None or pd.isna(kwh) else float(kwh)))
    day = first
    while day <= last:
        if day.date() not in cal_days:
            name = DAYS[day.day_of_week]
            for trip in ev.trips:
                if name not in trip.days:
                    continue
                t_out = _local(day + pd.Timedelta(trip.out + ":00"), tz)
                back = day + pd.Timedelta(trip.back + ":00")
                if trip.back <= trip.out:
                    back += pd.Timedelta(days=1)
                out.append((t_out.tz_convert("UTC"), _local(back, tz).tz_convert("UTC"), trip.drive_kwh))
        day += pd.Timedelta(days=1)
    return sorted(t for t in out if t[1] > start and t[0] < end)


def read_calendar(path: Path) -> pd.DataFrame:
    """A calendar CSV: ``time_out``, ``time_back`` (local times), optional ``drive_kwh``."""
    df = pd.read_csv(path)
    missing = [c for c in ("time_out", "time_back") if c not in df]
    if missing:
        raise ValueError(f"{path}: no column {', '.join(missing)} (expected time_out, time_back[, drive_kwh])")
    return df


def ev_signals(ev: Ev, index: pd.DatetimeIndex, step: pd.Timedelta, tz: str, seed: int = 0,
               calendar: pd.DataFrame | None = None) -> pd.DataFrame:
    """``plugged`` [0–1], ``drive_wh`` and ``need_wh`` [Wh] on each step of ``index`` (UTC starts).

    A trip's energy is its ``drive_kwh``, else the energy between the target it left with and a
    state of charge on arrival drawn from N(``arrival_soc_mean``, ``arrival_soc_sd``) (clipped to
    [0, target]), seeded with ``seed`` and the trip's departure (the same trip each run and in every
    window that holds it).
    """
    idx = pd.DatetimeIndex(index)
    n = len(idx)
    starts = idx.as_unit("ns").asi8.astype(np.float64) / 1e9  # [s] (whatever the index's own unit)
    width = step.total_seconds()
    plugged = np.ones(n)
    drive = np.zeros(n)
    need = np.zeros(n)
    for t_out, t_back, kwh in trips_between(ev, idx[0], idx[-1] + step, tz, calendar) if n else []:
        a, b = t_out.timestamp(), t_back.timestamp()
        away = np.clip(np.minimum(starts + width, b) - np.maximum(starts, a), 0.0, width) / width
        plugged -= away
        if kwh is None:  # drawn per trip (seeded by its departure): the same trip whatever the window
            rng = np.random.default_rng([seed, int(a)])
            arrive = float(np.clip(rng.normal(ev.arrival_soc_mean, ev.arrival_soc_sd), 0.0, ev.target_soc))
            kwh = (ev.target_soc - arrive) * ev.capacity_kwh
        k_back = int(np.searchsorted(starts, b, side="left") - 1)  # the step it comes home in
        if 0 <= k_back < n and b < starts[-1] + width:  # (back after the window: its energy is beyond it)
            drive[k_back] += kwh * 1000.0
        k_out = int(np.searchsorted(starts, a, side="right") - 1)
        if 0 <= k_out < n:
            need[k_out] = max(need[k_out], ev.target_soc * ev.usable_wh)
    return pd.DataFrame({"plugged": np.clip(plugged, 0.0, 1.0), "drive_wh": drive, "need_wh": need}, index=idx)


def check_ids(evs: Sequence[Ev]) -> None:
    """Each car's id is its own."""
    ids = [e.id for e in evs]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise ValueError(f"two cars named {', '.join(dup)}")
