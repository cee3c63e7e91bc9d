"""Logging as a wrapper around the live home: one step record per step, and the history in InfluxDB.

:class:`LoggedHome` wraps a live home (usually a :class:`~pems.live.safe_home.SafeHome`) and keeps
the Plant protocol:

- every observation it passes on is written to InfluxDB as ``measured`` (at the step's start);
- when a step's commands are out, its record goes to the event log as one ``step`` event (what was
  measured, what the watchdog and the controller said, what was commanded), and to InfluxDB as
  ``commanded``, with the controller's full-state estimate (``estimated``: the slabs no sensor
  sees) and its plan;
- the watchdog's transitions (``fallback``, ``recover``) are mirrored to InfluxDB as ``event``;
- InfluxDB going down (it spools on disk) and coming back (it replays) is logged: it is not a
  control fault, and nothing measured or commanded is lost;
- with Home Assistant configured, each step's readings, energy totals and plan are published to it
  (:class:`~pems.live.home_assistant.HomeAssistant`).

No logging error reaches the home: every write here is guarded.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

from pems.controllers.base import Planner, Stateful
from pems.live.home import HomeListener, LiveHome, Sample
from pems.twin.signals import Action, Observation

log = logging.getLogger(__name__)


class LoggedHome(HomeListener):
    """The step log and InfluxDB around a live home (see the module notes).

    Parameters
    ----------
    home
        The live home or a wrapper of one.
    influx
        Optional :class:`~pems.live.influx_log.InfluxLog`.
    controller
        The controller whose estimate and plan are logged beside the commands (a
        :class:`~pems.controllers.base.Stateful` / :class:`~pems.controllers.base.Planner`).
    home_assistant
        Optional :class:`~pems.live.home_assistant.HomeAssistant` publisher.
    """

    def __init__(self, home: Any, influx: Any = None, controller: Any = None, home_assistant: Any = None) -> None:
        self.inner = home
        self.home: LiveHome = home.unwrapped
        self.influx, self.controller, self.home_assistant = influx, controller, home_assistant
        self._obs: Observation | None = None
        self._plan: tuple[Any, pd.DataFrame | None] = (None, None)  # (step, the controller's plan for it)
        self._log_up: bool | None = None  # the InfluxDB log's last known state
        self.home.listeners.append(self)
        self.home.events.listeners.append(self._mirror)

    @property
    def unwrapped(self) -> LiveHome:
        return self.home

    # ------------------------------------------------------------------ the Plant protocol
    def reset(self) -> Observation:
        return self._measured(self.inner.reset())

    def step(self, action: Action) -> Observation:
        return self._measured(self.inner.step(action))

    def _measured(self, obs: Observation) -> Observation:
        self._obs = obs
        if self.influx is not None and not self.home.stopped:
            try:
                rooms = self.home.rooms
                measured = {f"T_room__{r}": float(obs.T_room[i]) for i, r in enumerate(rooms)}
                measured.update(T_out=obs.T_out, P_pv=obs.P_pv, P_load=obs.P_load, P_grid=obs.P_grid,
                                P_bat=obs.P_bat)
                if obs.soc is not None:
                    measured["soc"] = obs.soc
                self.influx.write(obs.time, measured, "measured")
            except Exception:  # noqa: BLE001 - the log never stops the loop (it spools on its own)
                log.exception("influx write failed")
        return obs

    # ------------------------------------------------------------------ the home's listener
    def on_commanded(self, t: pd.Timestamp, record: dict[str, Any]) -> None:
        h, obs = self.home, self._obs
        rec: dict[str, Any] = {"step": record.get("step"), "mono_s": record.get("mono_s")}
        if obs is not None and h.last is not None:
            rec.update(T_room=dict(h.last.rooms.T_room), T_out=obs.T_out, soc=obs.soc, P_heat=obs.P_heat,
                       P_pv=obs.P_pv, P_load=obs.P_load, P_grid=obs.P_grid, P_bat=obs.P_bat)
        rec.update({k: v for k, v in record.items() if k not in ("step_error",)})
        h.events.write("step", t, **rec)
        if log.isEnabledFor(logging.INFO):
            heat, bat = record.get("heat_w"), record.get("battery")
            log.info("step %s %s: heat %s, battery %s (solve %.2f s)", t.isoformat(), record.get("state"),
                     "—" if heat is None else f"{float(np.sum(heat)) / 1000:.2f} kW",
                     "—" if bat is None else f"{bat['priority']} {bat.get('power_pct') or 0:.0f} %",
                     record.get("solve_s") or 0.0)
        self._influx_step(t, record)
        self._home_assistant(record)
        self._watch_log(h.clock.now())

    def on_tick(self, sample: Sample) -> None:
        self._watch_log(sample.now)

    def _influx_step(self, t: pd.Timestamp, record: dict[str, Any]) -> None:
        if self.influx is None:
            return
        rooms, ctrl = self.home.rooms, self.controller
        try:
            if "heat_w" in record:
                cmd = {f"P_heat_cmd__{r}": float(record["heat_w"][i]) for i, r in enumerate(rooms)}
                if record.get("bat_w") is not None:
                    cmd["P_bat_cmd"] = float(record["bat_w"])
                self.influx.write(t, cmd, "commanded")
            if not record.get("solver_ok"):
                return
            # the estimator's full state (the slabs no sensor sees) and the plan behind the command
            snap = ctrl.snapshot() if isinstance(ctrl, Stateful) else None
            if snap is not None:
                m, x = self.home.model, np.asarray(snap.x)
                est = {f"T_room__{r}": float(v) for r, v in zip(rooms, x[m.air])}
                est |= {f"T_mass__{r}": float(v) for r, v in zip(rooms, x[m.mass])}
                if m.has_battery:
                    est["soc"] = float(x[m.i_soc])
                self.influx.write(t, est, "estimated")
            plan = self.step_plan(record)
            if plan is not None:
                self.influx.write_plan(t, plan)
        except Exception:  # noqa: BLE001 - the log never stops the loop (it spools on its own)
            log.exception("influx write failed")

    def step_plan(self, record: dict[str, Any]) -> pd.DataFrame | None:
        """The controller's plan behind the step of ``record`` (None: no plan, or the solve failed),
        made once per step for the InfluxDB log, Home Assistant and the web page alike."""
        key = record.get("step")
        if self._plan[0] != key or key is None:
            ctrl = self.controller
            plan = ctrl.plan() if isinstance(ctrl, Planner) and record.get("solver_ok") else None
            self._plan = (key, plan)
        return self._plan[1]

    def _home_assistant(self, record: dict[str, Any]) -> None:
        """The step's readings (the means of the step that just ended), totals and plan to Home Assistant."""
        ha, obs = self.home_assistant, self._obs
        if ha is None or obs is None:
            return
        try:
            ha.observed(obs.time, obs.T_room, obs.T_out, obs.P_pv, obs.P_load, obs.P_grid, obs.P_bat, obs.soc,
                        obs.P_heat, self.home.settings.step_s, str(record.get("state", "active")),
                        self.step_plan(record), ev_soc=obs.ev_soc, ev_plugged=obs.ev_plugged, P_ev=obs.P_ev)
        except Exception:  # noqa: BLE001 - publishing never stops the loop
            log.exception("Home Assistant publish failed")

    def _mirror(self, event: dict[str, Any]) -> None:
        """The watchdog's transitions into InfluxDB (the event log's listener)."""
        if self.influx is None or event.get("kind") not in ("fallback", "recover"):
            return
        state = "fallback" if event["kind"] == "fallback" else "active"
        try:
            self.influx.write(event["time"], {"state": state, "reason": "; ".join(event.get("reasons", []))},
                              "event")
        except Exception:  # noqa: BLE001
            log.exception("influx event failed")

    def _watch_log(self, now: pd.Timestamp) -> None:
        """Log the InfluxDB log going down (it spools on disk) and coming back (it replays)."""
        if self.influx is None:
            return
        try:
            st = self.influx.status()
        except Exception:  # noqa: BLE001 - the log's health never stops the loop
            return
        up = bool(st.connected)
        if not up and st.last_error is None and st.down_since is None:
            return  # no contact yet: neither up nor down
        if up == self._log_up or (self._log_up is None and up):
            self._log_up = up
            return
        self._log_up = up
        ev = self.home.events
        if up:
            ev.write("log_store", now, state="up", reason="InfluxDB reachable again; replaying the spool",
                     pending_lines=st.pending_lines)
            log.info("InfluxDB log reachable again (%d lines to replay)", st.pending_lines)
        else:
            ev.write("log_store", now, state="down", reason=st.last_error or "InfluxDB not reachable",
                     pending_lines=st.pending_lines)
            log.warning("InfluxDB log down (%s): spooling on disk", st.last_error)
