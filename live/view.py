"""What the live home's web page shows, kept by the loop: the last days step by step, the plan, events.

The loop hands :class:`LiveView` each step (the observation, what was commanded, the controller's
plan and the forecast it planned with) and every event; the web app reads :meth:`LiveView.snapshot`
from its own threads. Recording a step is a few list appends under a lock (microseconds): the page
never costs the loop its time, and a page that is never opened costs it nothing more.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from pems.twin.signals import Forecast, Observation


def _iso(index: pd.DatetimeIndex) -> list[str]:
    """ISO 8601 UTC strings of a time index, vectorised (``Timestamp.isoformat`` per item is slow)."""
    values = pd.DatetimeIndex(index).tz_convert("UTC").tz_localize(None).values
    return [f"{t}Z" for t in np.datetime_as_string(values, unit="s")]


def _list(a: Any, digits: int = 2) -> list[float | None]:
    """A JSON-safe list of numbers, vectorised (None where not finite)."""
    a = np.round(np.asarray(a, dtype=float), digits)
    ok = np.isfinite(a)
    return a.tolist() if ok.all() else [float(v) if f else None for v, f in zip(a, ok)]


def _ahead(plan: pd.DataFrame | None, forecast: Forecast | None, rooms: list[str]) -> dict[str, Any]:
    """The plan and the forecast ahead as the page's lists."""
    out: dict[str, Any] = {}
    if forecast is not None:
        n = len(forecast.index)
        out = {"time": _iso(forecast.index), "price_import": _list(forecast.price_import, 4),
               "low": {r: _list(forecast.low[:, j]) for j, r in enumerate(forecast.rooms) if r in rooms},
               "high": {r: _list(forecast.high[:, j]) for j, r in enumerate(forecast.rooms) if r in rooms}}
        for col in ("P_pv", "P_load", "T_out"):
            if col in forecast.d_names:
                out[col] = _list(forecast.column(col)[:n], 1)
    if plan is not None and len(plan):
        out["plan_time"] = _iso(pd.DatetimeIndex(plan.index))
        for col in plan.columns:
            if col.startswith(("P_heat__", "T_room__")) or col in ("P_bat", "soc"):
                scale = 100.0 if col == "soc" else 1.0
                out[col] = _list(scale * plan[col].to_numpy(dtype=float), 2)
    return out


def _num(v: Any, digits: int = 2) -> float | None:
    """A JSON-safe number (None for missing or not finite)."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return round(f, digits) if math.isfinite(f) else None


class LiveView:
    """The live page's data (see the module notes).

    Parameters
    ----------
    rooms
        Room ids, in the model's order.
    step_s
        Control step [s].
    keep_days
        Days of steps kept for the page.
    max_events
        Recent events kept.
    """

    def __init__(self, rooms: tuple[str, ...] | list[str], step_s: float, keep_days: float = 7.0,
                 max_events: int = 200) -> None:
        self.rooms = list(rooms)
        self.step_s = float(step_s)
        self._lock = threading.Lock()
        self._steps: deque[dict[str, Any]] = deque(maxlen=max(1, int(keep_days * 86400 / step_s)))
        self._events: deque[dict[str, Any]] = deque(maxlen=max_events)
        self._ahead_raw: tuple[pd.DataFrame | None, Forecast | None] = (None, None)
        self._ahead: dict[str, Any] | None = {}  # the page's lists of the plan and forecast (None: not yet made)
        self.version = 0  # grows with every step or event recorded (the page's stream waits on it)
        self.changed = threading.Condition(self._lock)
        self.health: Callable[[], dict[str, Any]] | None = None  # set by the loop: adapters and watchdog
        self.overrides: Callable[[], list[dict[str, Any]]] | None = None  # set by the loop: the overrides in force

    # ------------------------------------------------------------------ from the loop
    def on_step(self, obs: Observation, record: dict[str, Any], plan: pd.DataFrame | None,
                forecast: Forecast | None) -> None:
        """One control step: ``obs`` at its start (powers: the means of the step before), what
        ``record`` says was commanded, the plan and the forecast it was made with."""
        heat = np.zeros(len(self.rooms)) if obs.P_heat is None else np.asarray(obs.P_heat, dtype=float)
        step: dict[str, Any] = {
            "time": obs.time.isoformat(), "state": str(record.get("state", "")),
            "T_room": [_num(v) for v in obs.T_room], "P_heat": [_num(v, 0) for v in heat],
            "T_out": _num(obs.T_out), "P_pv": _num(obs.P_pv, 0), "P_load": _num(obs.P_load, 0),
            "P_grid": _num(obs.P_grid, 0), "P_bat": _num(obs.P_bat, 0),
            "soc": None if obs.soc is None else _num(100 * obs.soc, 1),
            "solve_s": _num(record.get("solve_s"), 3),
        }
        if forecast is not None:
            step["price"] = _num(forecast.price_import[0], 4)
            step["low"] = [_num(v) for v in forecast.low[0]]
            step["high"] = [_num(v) for v in forecast.high[0]]
        with self._lock:
            self._steps.append(step)
            if plan is not None or forecast is not None:
                # kept as they are: turned into the page's lists only when a page asks (the loop's
                # time is the control's; the controller makes both anew every step)
                self._ahead_raw = (plan, forecast)
                self._ahead = None
            self.version += 1
            self.changed.notify_all()

    def on_event(self, event: dict[str, Any]) -> None:
        """An event of the loop's log (the event log's listener); steps are shown as steps, not here."""
        if event.get("kind") in ("step", "command"):
            return
        keep = {k: v for k, v in event.items() if isinstance(v, (str, int, float, bool)) or v is None}
        keep["time"] = str(event.get("time", ""))
        with self._lock:
            self._events.append(keep)
            self.version += 1
            self.changed.notify_all()

    # ------------------------------------------------------------------ for the page
    def snapshot(self, days: float | None = None) -> dict[str, Any]:
        """Everything the page draws: the steps of the last ``days`` (all kept: None), the plan and
        forecast ahead, recent events (newest first) and the health of the adapters."""
        with self._lock:
            steps = list(self._steps)
            events, version = list(self._events)[::-1], self.version
            ahead, raw = self._ahead, self._ahead_raw
        if ahead is None:
            ahead = _ahead(*raw, self.rooms)
            with self._lock:
                if self._ahead_raw is raw:
                    self._ahead = ahead
        if days is not None and steps:
            n = int(days * 86400 / self.step_s)
            steps = steps[-n:] if n > 0 else []  # (steps[-0:] would be all of them)
        health: dict[str, Any] = {}
        if self.health is not None:
            try:
                health = self.health()
            except Exception as exc:  # noqa: BLE001 - the page shows it, the loop never sees it
                health = {"error": str(exc)}
        overrides = self.overrides() if self.overrides is not None else []
        return {"version": version, "rooms": self.rooms, "step_s": self.step_s, "steps": steps, "ahead": ahead,
                "events": events, "health": health, "overrides": overrides}

    def wait(self, version: int, timeout: float) -> int:
        """Block until something newer than ``version`` is recorded (or ``timeout`` [s]); the version now."""
        with self._lock:
            if self.version <= version:
                self.changed.wait(timeout)
            return self.version
