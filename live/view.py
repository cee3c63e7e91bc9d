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

from pems.live.forecast_bands import COLUMNS as BAND_COLUMNS
from pems.live.forecast_bands import ForecastErrors
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


def _forecast_columns(forecast: Forecast) -> dict[str, np.ndarray]:
    return {c: forecast.column(c) for c in BAND_COLUMNS if c in forecast.d_names}


def _ahead(plan: pd.DataFrame | None, forecast: Forecast | None, rooms: list[str],
           errors: ForecastErrors | None = None) -> dict[str, Any]:
    """The plan and the forecast ahead as the page's lists, with the forecasts' P10–P90 bands (a
    learned forecaster's own, else the loop's past errors by lead) and why the plan does what it does."""
    out: dict[str, Any] = {}
    if forecast is not None:
        out = {"time": _iso(forecast.index), "price_import": _list(forecast.price_import, 4),
               "low": {r: _list(forecast.low[:, j]) for j, r in enumerate(forecast.rooms) if r in rooms},
               "high": {r: _list(forecast.high[:, j]) for j, r in enumerate(forecast.rooms) if r in rooms}}
        cols = _forecast_columns(forecast)
        for col, v in cols.items():
            out[col] = _list(v, 1)
        bands = errors.bands(forecast.index[0], cols) if errors is not None else {}
        learned = forecast.extras.get("quantiles") or {}
        out["bands"] = {}
        for col in cols:
            if col in learned:
                p10, p90 = learned[col]
                out["bands"][col] = {"p10": _list(p10, 1), "p90": _list(p90, 1), "source": "learned forecaster"}
            elif col in bands and np.isfinite(bands[col]["p90"]).any():
                out["bands"][col] = {"p10": _list(bands[col]["p10"], 1), "p90": _list(bands[col]["p90"], 1),
                                     "source": "this loop's past errors", "samples": bands[col]["samples"]}
        out["why"] = plan_why(plan, forecast)
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


def plan_why(plan: pd.DataFrame | None, forecast: Forecast | None) -> dict[str, Any]:
    """Why the plan does what it does, in the prices it plans with: when it heats and when it moves
    the battery, against the mean price over the plan.

    The plan's heating and battery energy are weighted by the import price of their steps: heating
    at a mean price below the plan's is heating moved into cheap hours (or onto PV), charging cheap
    and discharging dear is the battery's arbitrage. Returns the numbers and a sentence (empty
    without a plan)."""
    if plan is None or forecast is None or not len(plan):
        return {}
    n = min(len(plan), len(forecast))
    if n == 0:
        return {}
    step_h = (plan.index[1] - plan.index[0]).total_seconds() / 3600 if len(plan) > 1 else 0.25
    price = np.asarray(forecast.price_import[:n], dtype=float)
    heat = plan[[c for c in plan.columns if c.startswith("P_heat__")]].to_numpy(dtype=float)[:n].sum(axis=1)
    out: dict[str, Any] = {"hours": round(n * step_h, 1), "mean_price": round(float(price.mean()), 4),
                           "cheapest_price": round(float(price.min()), 4), "dearest_price": round(float(price.max()), 4)}
    e_heat = float(heat.sum() * step_h / 1000)
    words = []
    out["heating_kWh"] = round(e_heat, 1)
    if e_heat > 0.05:
        p_heat = float((heat * price).sum() / heat.sum())
        out["heating_price"] = round(p_heat, 4)
        rel = 100 * (1 - p_heat / out["mean_price"]) if out["mean_price"] > 0 else 0.0
        head = f"heats {e_heat:.1f} kWh over the next {out['hours']:g} h at a mean {p_heat:.3f} per kWh, "
        mean = f"the mean price of those hours ({out['mean_price']:.3f})"
        if rel >= 10:
            tail = f"{rel:.0f} % below {mean}: the heat is moved into the cheap hours, the slabs and rooms storing it"
        elif rel >= 1:
            tail = f"{rel:.0f} % below {mean}: a little of the heat is moved into cheaper hours"
        elif rel <= -1:
            tail = f"{-rel:.0f} % above {mean}: the heat is needed when it is given"
        else:
            tail = f"about {mean}: the heat is needed when it is given"
        words.append(head + tail)
    else:
        words.append(f"needs no heating over the next {out['hours']:g} h")
    if "P_bat" in plan:
        pb = plan["P_bat"].to_numpy(dtype=float)[:n]
        ch, dis = np.maximum(pb, 0.0), np.maximum(-pb, 0.0)
        e_ch, e_dis = float(ch.sum() * step_h / 1000), float(dis.sum() * step_h / 1000)
        out["battery_charge_kWh"], out["battery_discharge_kWh"] = round(e_ch, 1), round(e_dis, 1)
        part = []
        if e_ch > 0.05:
            out["charge_price"] = round(float((ch * price).sum() / ch.sum()), 4)
            part.append(f"charges the battery with {e_ch:.1f} kWh when a kWh costs {out['charge_price']:.3f} on average")
        if e_dis > 0.05:
            out["discharge_price"] = round(float((dis * price).sum() / dis.sum()), 4)
            part.append(f"gives back {e_dis:.1f} kWh when it would cost {out['discharge_price']:.3f}")
        words.append(" and ".join(part) if part else "leaves the battery as it is")
    out["sentence"] = "The plan " + "; it ".join(words) + "."
    return out


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
    cars
        Car ids (the house's ``[[ev]]``): their plug, reported state of charge and charging per step.
    """

    def __init__(self, rooms: tuple[str, ...] | list[str], step_s: float, keep_days: float = 7.0,
                 max_events: int = 200, cars: tuple[str, ...] | list[str] = ()) -> None:
        self.rooms = list(rooms)
        self.cars = list(cars)
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
        self.savings: Callable[[], dict[str, Any]] | None = None  # set by the loop: against the rule-based twin
        self.errors = ForecastErrors(step_s)  # the forecasts' errors by lead: their P10–P90 bands

    # ------------------------------------------------------------------ from the loop
    def on_step(self, obs: Observation, record: dict[str, Any], plan: pd.DataFrame | None,
                forecast: Forecast | None, saved: float | None = None) -> None:
        """One control step: ``obs`` at its start (powers: the means of the step before), what
        ``record`` says was commanded, the plan and the forecast it was made with, and the savings so
        far against the rule-based twin [currency]."""
        heat = np.zeros(len(self.rooms)) if obs.P_heat is None else np.asarray(obs.P_heat, dtype=float)
        step: dict[str, Any] = {
            "time": obs.time.isoformat(), "state": str(record.get("state", "")),
            "T_room": [_num(v) for v in obs.T_room], "P_heat": [_num(v, 0) for v in heat],
            "T_out": _num(obs.T_out), "P_pv": _num(obs.P_pv, 0), "P_load": _num(obs.P_load, 0),
            "P_grid": _num(obs.P_grid, 0), "P_bat": _num(obs.P_bat, 0),
            "soc": None if obs.soc is None else _num(100 * obs.soc, 1),
            "solve_s": _num(record.get("solve_s"), 3), "saved": _num(saved, 3),
        }
        if self.cars:  # a state of charge the car does not report (away, evcc offline) is None
            n = len(self.cars)
            soc = obs.ev_soc if obs.ev_soc is not None else np.full(n, np.nan)
            step["ev_soc"] = [_num(100 * float(v), 1) for v in soc]
            step["ev_plugged"] = [bool(v) for v in (obs.ev_plugged if obs.ev_plugged is not None else np.zeros(n))]
            step["P_ev"] = [_num(v, 0) for v in (obs.P_ev if obs.P_ev is not None else np.zeros(n))]
        if forecast is not None:
            step["price"] = _num(forecast.price_import[0], 4)
            step["low"] = [_num(v) for v in forecast.low[0]]
            step["high"] = [_num(v) for v in forecast.high[0]]
        measured = {"P_pv": obs.P_pv, "P_load": obs.P_load, "T_out": obs.T_out}
        with self._lock:
            self.errors.record(obs.time, {} if forecast is None else _forecast_columns(forecast), measured)
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
            errors = self.errors.copy() if ahead is None else None
        if ahead is None:
            ahead = _ahead(*raw, self.rooms, errors)
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
        savings = self.savings() if self.savings is not None else {}
        return {"version": version, "rooms": self.rooms, "cars": self.cars, "step_s": self.step_s, "steps": steps,
                "ahead": ahead,
                "events": events, "health": health, "overrides": overrides, "savings": savings}

    def wait(self, version: int, timeout: float) -> int:
        """Block until something newer than ``version`` is recorded (or ``timeout`` [s]); the version now."""
        with self._lock:
            if self.version <= version:
                self.changed.wait(timeout)
            return self.version
