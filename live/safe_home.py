"""Safety as a wrapper around the live home: the watchdog, deadlines and hand-back on every fault.

:class:`SafeHome` wraps a :class:`~pems.live.home.LiveHome` (or a wrapper of one) and keeps the
Plant protocol. It decides, before each step's commands go out, whether they may:

- **the watchdog** (:class:`~pems.live.safety.Watchdog`) checks the step's reading and every inner
  tick's (stale, implausible or stuck sensors, a lost gateway or inverter, a calendar jump, repeated
  solver faults, an emulator whose clock the loop follows stopped or gone); on ``fallback`` the home gets its own logic back at once, from the tick that saw it;
- **the controller's answer**: an action that carries a ``reason`` (the controller fell back, raised,
  or had no forecast) or commands nothing hands the home back for the step;
- **deadlines**: the controller's turn (from the observation to the command) is armed on the
  :class:`~pems.live.guard.Guard`, which runs on its own thread; a turn that overruns hands the home
  back from there, and its late action is thrown away.

Everything it decides goes into the step's record (``state``, ``faults``, ``solver_ok``,
``solver_reason``, ``commands``) and the event log (``fallback``, ``recover``, ``solver_fallback``,
``deadline``).
"""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd

from pems.live.clock import Followed
from pems.live.home import HomeListener, LiveHome, Sample
from pems.live.safety import SafetyLimits, Watchdog
from pems.twin.signals import Action, Observation

log = logging.getLogger(__name__)

#: The home's own logic for a step (what a fault asks of the home).
HOME = Action()


def judge(action: Action) -> tuple[bool, str]:
    """Whether ``action`` is the controller's plan (True, "") or a fallback (False, why)."""
    if action.reason:
        return False, action.reason
    if action.heat_w is None and action.heat_setpoint_c is None:
        return False, "controller gave neither heater powers nor set-points"
    return True, ""


class SafeHome(HomeListener):
    """The watchdog and the hand-back around a live home (see the module notes).

    Parameters
    ----------
    home
        The live home (or a wrapper whose :attr:`unwrapped` is one).
    limits
        Watchdog thresholds.
    """

    def __init__(self, home: Any, limits: SafetyLimits | None = None) -> None:
        self.inner = home
        self.home: LiveHome = home.unwrapped
        h = self.home
        self.watchdog = Watchdog(h.rooms, limits or SafetyLimits(), has_inverter=h.inverter is not None)
        h.outdoor_problem = self.watchdog.outdoor  # a implausible outdoor value never reaches the estimator
        h.guard.on_deadline = self._deadline_missed
        h.listeners.append(self)

    @property
    def unwrapped(self) -> LiveHome:
        return self.home

    # ------------------------------------------------------------------ the Plant protocol
    def reset(self) -> Observation:
        obs = self.inner.reset()
        self._arm()
        return obs

    def step(self, action: Action) -> Observation:
        h, s = self.home, self.home.settings
        rec = h.record
        smp = h.last
        ok, reason = judge(action)
        self.watchdog.solver_result(ok, reason)
        # the step's reading is checked after the controller's turn, so the solver rule counts this step too
        faults = self._faults(smp) if smp is not None else []
        if smp is not None:
            self._health(smp.now, faults)
        now = smp.now if smp is not None else h.clock.now()
        rec.update(state=self.watchdog.state, faults=faults, solver_ok=ok)
        if not ok:
            rec["solver_reason"] = reason
            h.events.write("solver_fallback", now, reason=reason)
        if h.guard.overdue:
            # the guard handed the home back while the controller was busy: its plan is too late to use
            why = f"deadline: the step took longer than {s.deadline:g} s"
            rec.update(solver_ok=False, solver_reason=why, commands="none (deadline missed)")
            self.watchdog.solver_result(False, why)
            action = HOME
        elif self.watchdog.state == "active":
            if not ok:
                # the controller's own fallback (rule-based set-points): the home's thermostats do
                # exactly that, and the inverter runs itself
                rec["commands"] = "home (step error)" if rec.get("step_error") else "home (controller fallback)"
                action = HOME
        else:
            rec["commands"] = "none (fallback)"
            action = HOME
        obs = self.inner.step(action)
        self._arm()
        return obs

    def _arm(self) -> None:
        """The controller's turn begins: it must be done (its commands out) within the deadline."""
        h = self.home
        h.guard.arm(f"control step {h.k}", h.clock.monotonic() + h.settings.deadline)

    # ------------------------------------------------------------------ the home's listener
    def on_tick(self, sample: Sample) -> None:
        self._health(sample.now, self._faults(sample))

    def _faults(self, sample: Sample) -> list[str]:
        """The watchdog's faults of a reading, and a followed clock's (an emulator that stopped or died)."""
        faults = self.watchdog.check(sample.now, sample.mono, sample.rooms, sample.inverter)
        clock = self.home.clock
        if isinstance(clock, Followed) and (why := clock.fault()) is not None:
            faults.append(why)
        return faults

    def on_error(self, where: str, exc: Exception) -> None:
        self.watchdog.solver_result(False, f"{where} raised {type(exc).__name__}: {exc}")

    def _health(self, now: pd.Timestamp, faults: list[str]) -> None:
        tr = self.watchdog.update(now, faults)
        if tr is None:
            return
        h = self.home
        if tr.state == "fallback":
            h.events.write("fallback", now, reasons=list(tr.reasons))
            log.warning("live loop falls back at %s: %s", now, "; ".join(tr.reasons))
            h.give_back(now)
        else:
            h.events.write("recover", now, reasons=list(tr.reasons))
            log.info("live loop recovers at %s", now)

    def _deadline_missed(self, what: str, late_s: float) -> None:
        """The guard's thread: ``what`` overran its deadline; the home gets its own logic back now."""
        h = self.home
        now = h.clock.now()
        log.error("%s missed its deadline (%.0f s); the home runs itself", what, h.settings.deadline)
        report = h.give_back(now)
        h.events.write("deadline", now, what=what, deadline_s=h.settings.deadline, late_s=late_s, handback=report)
