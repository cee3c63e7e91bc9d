"""The live loop's safety layer: a watchdog with explicit rules, and bounds on every command.

The :class:`Watchdog` looks at every sample the loop takes (each inner tick, a minute by default)
and at every solve, and says whether the loop may command the home. Its rules, each with its
threshold in :class:`SafetyLimits`:

==================  ==========================================================================
rule                fault when
==================  ==========================================================================
``broker``          the MQTT connection to the room bus is down
``gateway``         the gateway between the broker and the Miniserver (LoxBerry) says it is offline
                    (its status topic, e.g. its last will ``Disconnected``): nothing the loop sends
                    reaches the rooms, and what it reads is old
``stale``           a room temperature is older than ``stale_room_s``. Loxone publishes only on
                    change, so a steady room is silent: the limit must exceed the Miniserver's
                    periodic republish interval (``republish_s``; default 1.5 × it)
``nan``             a room temperature is missing or not finite (sensor fault, ``null`` payload)
``range``           a room temperature outside ``[room_min_c, room_max_c]`` (−40 °C in a living
                    room), an SOC outside [0, 1], an inverter power that is not finite or beyond
                    ``max_power_w``
``jump``            a room temperature moved more than ``max_jump_k`` + ``max_rate_k_per_h`` × the
                    time between them from any plausible value of the last ``rate_window_s`` (air
                    does not jump, nor ramp by kelvins a minute; a failing or swapped sensor
                    does). Held until the value is plausible against that window again.
``stuck``           a room temperature identical for ``stuck_s`` (0 or None: rule off)
``inverter``        ``inverter_failures`` consecutive inverter reads failed
``solver``          ``solver_failures`` consecutive control steps in which the controller fell
                    back to its rule-based action
``clock``           calendar time moved against the monotonic clock by more than ``clock_jump_s``
                    (an NTP step, a wrong RTC); latched until the offset is steady again
==================  ==========================================================================

State machine: ``active`` → ``fallback`` at the first sample with any fault (the loop then hands
the rooms back to their thermostats and releases the inverter, within the same inner tick);
``fallback`` → ``active`` after ``recover_after`` consecutive healthy samples (hysteresis: a
flapping link does not make the loop flap). Every transition is kept with its time and reasons.

The outdoor temperature is checked too (:meth:`Watchdog.outdoor`), but an implausible one is not a
fault: the loop then takes the forecast's value, as when the home has no outdoor sensor.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd

from pems.live.devices import InverterReadings, RoomReadings

WatchdogState = Literal["active", "fallback"]


@dataclass(frozen=True)
class SafetyLimits:
    """Thresholds of the watchdog's rules.

    At the first sample with a fault the loop hands the rooms back to their thermostats and the
    inverter to "load first"; it takes control back after ``recover_after`` healthy samples.

    Attributes
    ----------
    republish_s
        The room bus's periodic republish interval, a Miniserver's "send every" [s].
    stale_room_s
        Age at which a room temperature is stale (default: 1.5 × ``republish_s``) [s].
    room_min_c
        Lowest plausible air temperature of a room [°C].
    room_max_c
        Highest plausible air temperature of a room [°C].
    max_jump_k
        Largest plausible change of a room temperature from any plausible value of the last
        ``rate_window_s``, plus ``max_rate_k_per_h`` × the time between the two [K].
    max_rate_k_per_h
        Plausible rate of change added to ``max_jump_k`` [K h⁻¹].
    rate_window_s
        How far back the ``jump`` rule compares a new value with earlier plausible ones [s].
    stuck_s
        A temperature bit-identical this long is a stuck sensor; 0 disables the rule. Floor-heated
        rooms can sit within one 0.1 K step for hours, hence the default of 8 h [s].
    out_min_c, out_max_c
        Plausible outdoor temperatures [°C].
    max_power_w
        Largest plausible magnitude of any power the inverter reports [W].
    inverter_failures
        Consecutive failed inverter reads that make a fault.
    solver_failures
        Consecutive controller fallbacks that make a fault.
    clock_jump_s
        Largest tolerated step of calendar time against monotonic time [s].
    recover_after
        Consecutive healthy samples before control is taken back.
    """

    republish_s: float = 900.0
    stale_room_s: float | None = None
    room_min_c: float = 5.0
    room_max_c: float = 35.0
    max_jump_k: float = 3.0
    max_rate_k_per_h: float = 2.0
    rate_window_s: float = 3600.0
    stuck_s: float | None = 8 * 3600.0
    out_min_c: float = -50.0
    out_max_c: float = 50.0
    max_power_w: float = 100_000.0
    inverter_failures: int = 2
    solver_failures: int = 3
    clock_jump_s: float = 60.0
    recover_after: int = 3

    @property
    def stale_s(self) -> float:
        """The staleness limit in force [s]."""
        return self.stale_room_s if self.stale_room_s is not None else 1.5 * self.republish_s


@dataclass(frozen=True)
class Transition:
    """One change of the watchdog's state."""

    time: pd.Timestamp  # calendar time of the sample that caused it (UTC)
    state: WatchdogState  # the new state
    reasons: tuple[str, ...]  # why (faults when falling back; "healthy for k samples" on recovery)


@dataclass
class _RoomTrack:
    window: deque[tuple[float, float]] = field(default_factory=deque)  # (monotonic s, °C) of plausible values
    same_since: float = 0.0  # monotonic time since which the value is identical [s]
    last: float = math.nan

    def implausible(self, v: float, mono_s: float, lim: SafetyLimits) -> tuple[float, float] | None:
        """The plausible value ``v`` is too far from, and the allowance [K] (None: plausible)."""
        w = self.window
        # the last plausible value stays however old: a value that jumped stays held until it is
        # plausible against that one (whose allowance grows with the time since)
        while len(w) > 1 and mono_s - w[0][0] > lim.rate_window_s:
            w.popleft()
        for t, ref in w:
            allow = lim.max_jump_k + lim.max_rate_k_per_h * max(0.0, mono_s - t) / 3600.0
            if abs(v - ref) > allow:
                return ref, allow
        return None


@dataclass
class Watchdog:
    """Decides, sample by sample, whether the loop may command the home (see the module notes).

    Parameters
    ----------
    rooms
        Room ids, in the house's order.
    limits
        Thresholds.
    has_inverter
        Whether inverter reads are expected (the ``inverter`` rule).
    """

    rooms: tuple[str, ...]
    limits: SafetyLimits = field(default_factory=SafetyLimits)
    has_inverter: bool = True
    state: WatchdogState = "active"
    transitions: list[Transition] = field(default_factory=list)
    faults: tuple[str, ...] = ()  # the faults of the last sample
    _healthy: int = 0
    _inv_fail: int = 0
    _solver_fail: int = 0
    _solver_reason: str = ""
    _offset: float | None = None  # calendar − monotonic time [s], last accepted
    _clock_fault: str = ""
    _tracks: dict[str, _RoomTrack] = field(default_factory=dict)

    # ------------------------------------------------------------------ inputs
    def solver_result(self, ok: bool, reason: str = "") -> None:
        """Record one control step's solve (``ok=False``: the controller fell back)."""
        if ok:
            self._solver_fail, self._solver_reason = 0, ""
        else:
            self._solver_fail += 1
            self._solver_reason = reason

    def check(self, now: pd.Timestamp, mono_s: float, rooms: RoomReadings,
              inverter: InverterReadings | None) -> list[str]:
        """The faults of one sample (empty: healthy). Does not change :attr:`state`.

        Parameters
        ----------
        now
            Calendar time of the sample (UTC), as the loop's clock says.
        mono_s
            Monotonic time of the sample [s] (never jumps).
        rooms, inverter
            What the devices gave (``inverter`` None: none configured).
        """
        lim = self.limits
        faults: list[str] = []
        # clock: calendar time must advance with monotonic time
        offset = (now - pd.Timestamp("1970-01-01", tz="UTC")).total_seconds() - mono_s
        if self._offset is None:
            self._offset = offset
        elif abs(offset - self._offset) > lim.clock_jump_s:
            jump = offset - self._offset
            self._clock_fault = f"clock: calendar time jumped {'forward' if jump > 0 else 'back'} by {abs(jump):.0f} s"
            self._offset = offset  # a steady new offset clears the fault after `recover_after` samples
            faults.append(self._clock_fault)
        if not rooms.connected:
            faults.append("broker: room bus disconnected")
        elif rooms.gateway_online is False:
            faults.append("gateway: the gateway to the Miniserver reports itself offline")
        stale = lim.stale_s
        for r in self.rooms:
            v = rooms.T_room.get(r, math.nan)
            age = rooms.age_s.get(f"T_room__{r}", math.inf)
            tr = self._tracks.setdefault(r, _RoomTrack())
            if not math.isfinite(v):
                faults.append(f"nan: T_room__{r} has no value")
                continue
            if age > stale:
                faults.append(f"stale: T_room__{r} is {age:.0f} s old (limit {stale:.0f} s)")
            if not lim.room_min_c <= v <= lim.room_max_c:
                faults.append(f"range: T_room__{r} = {v:.1f} °C outside [{lim.room_min_c:g}, {lim.room_max_c:g}]")
                continue
            if v != tr.last:
                tr.same_since, tr.last = mono_s, v
            if lim.stuck_s and mono_s - tr.same_since > lim.stuck_s:
                faults.append(f"stuck: T_room__{r} unchanged at {v:.1f} °C for {mono_s - tr.same_since:.0f} s")
            bad = tr.implausible(v, mono_s, lim)
            if bad is not None:
                faults.append(f"jump: T_room__{r} = {v:.1f} °C, {v - bad[0]:+.1f} K from a plausible value of the "
                              f"last {lim.rate_window_s / 60:.0f} min (limit {bad[1]:.1f} K)")
                continue
            if not tr.window or tr.window[-1][1] != v or mono_s - tr.window[-1][0] > 60.0:
                tr.window.append((mono_s, v))
        if inverter is not None and self.has_inverter:
            if not inverter.ok:
                self._inv_fail += 1
                if self._inv_fail >= lim.inverter_failures:
                    faults.append(f"inverter: {self._inv_fail} consecutive reads failed")
            else:
                self._inv_fail = 0
                if not (math.isfinite(inverter.soc) and 0.0 <= inverter.soc <= 1.0):
                    faults.append(f"range: soc = {inverter.soc} outside [0, 1]")
                for name in ("P_pv", "P_load", "P_import", "P_export", "P_charge", "P_discharge"):
                    p = float(getattr(inverter, name))
                    if not (math.isfinite(p) and abs(p) <= lim.max_power_w):
                        faults.append(f"range: {name} = {p:g} W outside ±{lim.max_power_w:g} W")
        if self._solver_fail >= lim.solver_failures:
            faults.append(f"solver: {self._solver_fail} consecutive fallbacks ({self._solver_reason})")
        return faults

    def outdoor(self, t_out: float) -> str | None:
        """Why the outdoor temperature [°C] cannot be used (None: it can). Not a fault (see the module notes)."""
        if not math.isfinite(t_out):
            return None if math.isnan(t_out) else f"T_out = {t_out} is not finite"
        lim = self.limits
        if not lim.out_min_c <= t_out <= lim.out_max_c:
            return f"range: T_out = {t_out:g} °C outside [{lim.out_min_c:g}, {lim.out_max_c:g}]"
        return None

    def update(self, now: pd.Timestamp, faults: list[str]) -> Transition | None:
        """Apply one sample's faults to the state machine; returns the transition, if any."""
        self.faults = tuple(faults)
        if faults:
            self._healthy = 0
            if self.state == "active":
                return self._go(now, "fallback", tuple(faults))
            return None
        self._healthy += 1
        if self.state == "fallback" and self._healthy >= self.limits.recover_after:
            return self._go(now, "active", (f"healthy for {self._healthy} samples",))
        return None

    def force(self, now: pd.Timestamp, reason: str) -> Transition | None:
        """Fall back for a reason found outside the samples (e.g. a restart without usable state)."""
        self._healthy = 0
        return self._go(now, "fallback", (reason,)) if self.state == "active" else None

    def _go(self, now: pd.Timestamp, state: WatchdogState, reasons: tuple[str, ...]) -> Transition:
        self.state = state
        t = Transition(now, state, reasons)
        self.transitions.append(t)
        return t


# ---------------------------------------------------------------------------------------------
# Command bounds
# ---------------------------------------------------------------------------------------------
def bound_heat(heat_w: np.ndarray, rating_w: np.ndarray) -> np.ndarray:
    """Heater powers within [0, rating] [W]; NaN → 0 (a relay never heats on a number it cannot read)."""
    h = np.asarray(heat_w, dtype=float)
    h = np.where(np.isfinite(h), h, 0.0)
    return np.clip(h, 0.0, np.asarray(rating_w, dtype=float))


@dataclass(frozen=True)
class BatteryLimits:
    """What a battery command must respect."""

    max_charge_w: float  # [W]
    max_discharge_w: float  # [W]
    soc_min: float  # [0–1]
    soc_max: float  # [0–1]


def bound_battery(bat_w: float | None, soc: float, lim: BatteryLimits) -> float | None:
    """Battery power (charge +) within the ratings; no charging at ``soc_max``, no discharging at
    ``soc_min`` (an unknown SOC allows neither). None (leave it to the inverter) stays None."""
    if bat_w is None:
        return None
    if not math.isfinite(bat_w):
        return 0.0
    p = min(max(float(bat_w), -lim.max_discharge_w), lim.max_charge_w)
    if p > 0 and not (math.isfinite(soc) and soc < lim.soc_max):
        return 0.0
    if p < 0 and not (math.isfinite(soc) and soc > lim.soc_min):
        return 0.0
    return p
