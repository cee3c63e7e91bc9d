"""The live closed loop: one home, one controller, one clock — :func:`~pems.twin.plant.closed_loop` on a live home.

:class:`LiveLoop` runs the same closed loop as ``pems simulate`` (observe → decide → act, once per
control step); only the plant differs. Here it is a live home in its wrappers::

    LoggedHome(SafeHome(LiveHome(room bus, inverter, clock)))

- :class:`~pems.live.home.LiveHome` (:mod:`pems.live.home`): the Plant over the devices: reads,
  translates an action to relay pulses, set-points and inverter modes, runs the one-minute inner
  ticks, hands the home back (the translation and timing are described there);
- :class:`~pems.live.safe_home.SafeHome`: the watchdog, deadlines on the guard's own thread, and the
  hand-back on every fault;
- :class:`~pems.live.logged_home.LoggedHome`: one ``step`` record per step in ``events.jsonl``, and
  the measured, commanded and estimated history in InfluxDB.

The loop itself does what is neither the plant's nor the controller's: it holds the state folder
(lock, resume after a restart, the inverter owner's settings), turns anything that goes wrong in the
controller's turn (a forecast source that fails, a controller that raises or falls back) into an
action with a ``reason`` (the home is handed back for the step, and the watchdog counts it), feeds
the learned forecasters what was measured, and hands the home back first when it closes.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import pandas as pd

from pems.controllers.base import EstimatorState, Reporter, Stateful
from pems.live.clock import Followed
from pems.live.counterfactual import SAVINGS_FILE, Counterfactual
from pems.live.devices import Inverter, RoomBus
from pems.live.event_log import EventLog
from pems.live.home import HomeListener, LiveHome, LoopSettings, quietly
from pems.live.learned import FALLBACK
from pems.live.logged_home import LoggedHome
from pems.live.overrides import Overrides
from pems.live.safe_home import SafeHome
from pems.live.safety import SafetyLimits
from pems.live.sdnotify import Notifier
from pems.live.state import LoopState, StateStore
from pems.live.view import LiveView
from pems.twin.ev import with_measured_plugs
from pems.twin.model import HouseModel
from pems.twin.plant import closed_loop
from pems.twin.signals import Action, Forecast, Observation

__all__ = ["LiveLoop", "LoopSettings", "ForecastFn"]

log = logging.getLogger(__name__)

ForecastFn = Callable[[pd.Timestamp], Forecast]


# ---------------------------------------------------------------------------------------------
# what a live forecast may also do (each optional)
# ---------------------------------------------------------------------------------------------
@runtime_checkable
class Observing(Protocol):
    """A forecast that learns from what the home measured (the learned forecasters' history)."""

    def observe(self, t: pd.Timestamp, P_pv: float, P_load: float) -> None: ...


@runtime_checkable
class DriftWatched(Protocol):
    """A forecast whose live error is checked against the one it was accepted with."""

    def check_drift(self, t: pd.Timestamp) -> dict[str, dict[str, Any]]: ...


@runtime_checkable
class Fetching(Protocol):
    """A forecast with sources the loop fetches itself (:mod:`pems.live.fetched`), in threads of their own."""

    def fetch_reports(self) -> list[Any]: ...

    def fetch_status(self) -> dict[str, dict]: ...

    def close(self) -> None: ...


@runtime_checkable
class HoldsFiles(Protocol):
    """A forecast with files of its own in the state folder, written only once the loop holds it."""

    def on_start(self) -> None: ...


def forecast_now(fc: Forecast) -> dict[str, float]:
    """What the plan took for the step now, for the step's event: outdoor temperature [°C], PV and household
    load [W] and both prices [currency kWh⁻¹] (the forecast a decision was made on, found again in the log)."""
    out = {name: round(float(fc.column(name)[0]), 4) for name in ("T_out", "P_pv", "P_load") if name in fc.d_names}
    out.update(price_import=round(float(fc.price_import[0]), 6), price_export=round(float(fc.price_export[0]), 6))
    return out


class LiveLoop(HomeListener):
    """One home, one controller, one clock (see the module notes).

    Parameters
    ----------
    model
        The house model (room order, heater ratings, battery).
    controller
        Any controller (``reset``/``act``). One that is :class:`~pems.controllers.base.Stateful` has its
        estimate saved every step and resumed after a restart; a
        :class:`~pems.controllers.base.Planner`'s plan and a :class:`~pems.controllers.base.Reporter`'s
        fallbacks go into the log.
    forecast
        Calendar time of a step's start → the forecast from it.
    rooms
        The room bus (:class:`~pems.live.loxone.LoxoneMqtt`).
    inverter
        The inverter (:class:`~pems.live.growatt.GrowattModbus`) or None.
    clock
        :class:`~pems.live.clock.SimClock`, :class:`~pems.live.clock.WallClock`, or
        :class:`~pems.live.clock.JumpClock`.
    settings, limits
        Loop settings and watchdog thresholds.
    events_path
        ``events.jsonl`` (appended), or None to keep events in memory only (:attr:`events`).
    state_dir
        Folder of the persistent state and its lock, or None (no persistence).
    influx
        Optional :class:`~pems.live.influx_log.InfluxLog` (measured, commanded, events).
    home_assistant
        Optional :class:`~pems.live.home_assistant.HomeAssistant` (states and plan over MQTT discovery).
    currency
        The tariff's currency (the savings on the web page).
    events_options
        :class:`~pems.live.event_log.EventLog`'s rotation and cap (``max_bytes``, ``keep``, ``daily``,
        ``max_total_bytes``).
    chargers
        Each car's evcc loadpoint (:class:`~pems.live.evcc.EvccLoadpoint`), in the house file's car order.
    """

    def __init__(self, model: HouseModel, controller: Any, forecast: ForecastFn, rooms: RoomBus,
                 inverter: Inverter | None, clock: Any, settings: LoopSettings | None = None,
                 limits: SafetyLimits | None = None, events_path: str | Path | None = None,
                 state_dir: str | Path | None = None, influx: Any = None, home_assistant: Any = None,
                 currency: str = "", events_options: dict[str, Any] | None = None,
                 chargers: Sequence[Any] = ()) -> None:
        self.model, self.controller, self.forecast, self.clock = model, controller, forecast, clock
        self.settings = settings or LoopSettings()
        self.rooms: tuple[str, ...] = tuple(model.rooms)
        self._announced: tuple[str, int] | None = None  # the problem text on the bus, and on which connection
        self.events = EventLog(events_path, **(events_options or {}))
        self.home = LiveHome(model, rooms, inverter, clock, lambda t: self.forecast(t), self.events, self.settings,
                             chargers=chargers)
        # (a problem found while opening the log is said at the first step, once the bus is connected)
        self.events.on_problem = self._announce_problem
        self.safe = SafeHome(self.home, limits)
        self.plant = LoggedHome(self.safe, influx, controller, home_assistant)
        self.home_assistant = home_assistant
        # what the web page shows (pems.web): kept whether or not a page is open (microseconds a step)
        self.view = LiveView(self.rooms, self.settings.step_s, cars=model.cars)
        self.view.health = self.health
        self.events.listeners.append(self.view.on_event)
        self._last: tuple[Observation, Forecast | None] | None = None  # this step's observation and forecast
        self._prices: dict[pd.Timestamp, tuple[float, float]] = {}  # the last steps' prices, as forecast then
        if home_assistant is not None and home_assistant.price is None:
            home_assistant.price = self.price_of  # the grid bill in Home Assistant, at the prices planned with
        # what the people of the home asked for by hand (the web page), kept in the state folder
        self.overrides = Overrides(self.rooms, None if state_dir is None else Path(state_dir) / "overrides.json",
                                   self.events)
        self.view.overrides = self.overrides.as_list
        # what the home would have paid under its own logic: the rule-based twin beside it (the page's savings)
        self.counterfactual = Counterfactual(model, self.settings.step_s,
                                             None if state_dir is None else Path(state_dir) / SAVINGS_FILE,
                                             currency, self._estimate)
        self.view.savings = self.counterfactual.summary
        self.home.listeners.append(self)
        self.store = StateStore(state_dir) if state_dir is not None else None
        self.influx = influx
        self._sources: dict[str, str] = {}  # where the learned forecast columns came from last step
        self._started = False
        self.handed_back: dict[str, str] = {}  # what the last close() handed back, per device
        # systemd (deploy/pems.service, Type=notify): ready once connected, a watchdog ping every inner
        # tick from this loop's own thread (a hung loop stops pinging and is restarted), stopping at close
        self.systemd = Notifier()

    # what the parts hold, for callers and tests
    @property
    def bus(self) -> RoomBus:
        return self.home.bus

    @property
    def inverter(self) -> Inverter | None:
        return self.home.inverter

    @property
    def watchdog(self) -> Any:
        return self.safe.watchdog

    @property
    def guard(self) -> Any:
        return self.home.guard

    @property
    def mode(self) -> str:
        return self.home.mode

    @property
    def battery(self) -> Any:
        return self.home.battery

    @property
    def overruns(self) -> int:
        return self.home.overruns

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Lock the state folder, resume or start safe, connect the devices."""
        if self._started:
            return
        if self.store is not None:
            self.store.lock()
        if isinstance(self.forecast, HoldsFiles):  # the forecast's own files in the state folder: ours now
            self.forecast.on_start()
        self.controller.reset()
        now = self.clock.now()
        resumed = False
        if self.store is not None:
            st, why = self.store.load(now, self.settings.state_max_age_steps * self.settings.step_s, self.rooms)
            if st is not None:
                resumed = self._restore(st)
            self.events.write("state", now, resumed=resumed, why=why)
        self.home.connect()
        if self.home_assistant is not None:  # not waited for: Home Assistant is a view, never a condition
            quietly(lambda: self.home_assistant.connect(wait_s=0), "connecting to Home Assistant's broker")
        self._inverter_baseline(now)
        self.events.write("start", now, dry_run=self.settings.dry_run, rooms=list(self.rooms),
                          step_s=self.settings.step_s, inner_s=self.settings.inner_s, resumed=resumed)
        self.systemd.ready(f"connected{' (dry run)' if self.settings.dry_run else ''}; resumed: {resumed}")
        if not resumed:
            # A fresh start: whatever an earlier loop left behind, the home runs itself until the
            # first healthy step takes over (idempotent when it already does).
            self.home.give_back(now)
        self._started = True

    def _inverter_baseline(self, now: pd.Timestamp) -> None:
        """The owner's inverter settings, given back at every hand-back: recorded once, before the loop
        first writes, and kept in the state folder across restarts (see
        :meth:`~pems.live.state.StateStore.load_baseline`)."""
        inv = self.inverter
        if inv is None:
            return
        saved = self.store.load_baseline() if self.store is not None else None
        if saved is not None:
            inv.baseline, source = saved, "recorded earlier"
        else:
            try:
                current = inv.settings()
            except Exception:  # noqa: BLE001 - without a baseline the hand-back is the safe state
                log.exception("reading the inverter's settings failed")
                current = None
            if current is None:
                log.warning("the inverter's own settings could not be read at start: a hand-back sets it to "
                            "load first with every slot cleared, not to the owner's settings")
                self.events.write("inverter_baseline", now, source="unknown", settings=None)
                return
            inv.baseline, source = current, "read at start"
            if self.store is not None and not self.settings.dry_run:
                try:
                    self.store.save_baseline(current)
                except OSError as exc:
                    log.error("cannot keep the inverter's settings in %s: %s", self.store.folder, exc)
        self.events.write("inverter_baseline", now, source=source, settings=inv.baseline)

    def _restore(self, st: LoopState) -> bool:
        if isinstance(self.controller, Stateful) and st.estimator_x is not None and st.last_d is not None:
            self.controller.resume(EstimatorState(np.asarray(st.estimator_x, dtype=float),
                                                  np.asarray(st.last_d, dtype=float)))
        self.home.restore(st)
        return True

    def stop(self) -> None:
        """Ask :meth:`run` to end after the current tick."""
        self.home.stop_event.set()

    def close(self, handback: bool = True) -> dict[str, str]:
        """Hand the home back (unless ``handback`` is False: a simulated crash), disconnect, unlock.

        The hand-back to both devices comes first, each device on its own: no logging, state or
        file error can prevent or delay it. Returns what was handed back, per device: ``"sent"``,
        ``"dry-run"`` or ``"not sent: <why>"`` (also in the ``stop`` event, and in
        :attr:`handed_back`).
        """
        now = self.clock.now()
        report: dict[str, str] = {}
        self.systemd.stopping("handing the home back" if handback and self._started else "stopping")
        self.guard.cancel_offs()
        if handback and self._started:
            report = self.home.give_back(now)
        self.guard.stop()
        self.handed_back = report
        # nothing after the hand-back may stop the shutdown
        if handback and self._started:
            quietly(lambda: self._save(now, now), "saving the state at shutdown")
        quietly(lambda: self.events.write("stop", now, handback=report or False, steps=self.home.k,
                                          overruns=self.overruns, unsent_repeats=self.home.unsent_repeats),
                "the stop event")
        self.home.close()
        if isinstance(self.clock, Followed):
            quietly(self.clock.close, "closing the emulator clock's connection")
        if self.influx is not None:  # when down, the spool keeps it all
            quietly(lambda: self.influx.status().connected and self.influx.flush(5.0), "influx flush")
        if self.home_assistant is not None:  # says "offline" (the broker would, by its last will)
            quietly(self.home_assistant.close, "closing the Home Assistant connection")
        if isinstance(self.forecast, Fetching):
            quietly(self.forecast.close, "stopping the forecast fetches")
        if self.store is not None:
            quietly(self.store.unlock, "unlocking the state folder")
        self.events.close()
        self._started = False
        return report

    # ------------------------------------------------------------------ running
    def run(self, n_steps: int | None = None, first_mono: float | None = None) -> int:
        """Run control steps until :meth:`stop` (or ``n_steps``); returns the steps run.

        Calls :meth:`start` if needed; does not :meth:`close` (the caller decides on hand-back).
        """
        self.start()
        self.home.first_mono = first_mono
        return closed_loop(self.plant, self._decide, n_steps, stop=self.home.stop_event)

    def _decide(self, k: int, obs: Observation) -> tuple[Forecast | None, Action]:
        """The controller's turn. Nothing that goes wrong here escapes: it becomes an action with a
        ``reason`` (the safety layer hands the home back for the step and counts a solver fault)."""
        rec = self.home.record
        try:
            return self._decide_unguarded(obs, rec)
        except Exception as exc:  # noqa: BLE001 - a defect, a failing disk: the home runs itself this step
            log.exception("control step failed; the home runs itself")
            reason = f"control step raised {type(exc).__name__}: {exc}"
            self.events.write("step_error", self.clock.now(), reason=reason)
            rec["step_error"] = True
            return None, Action(reason=reason)

    def _decide_unguarded(self, obs: Observation, rec: dict[str, Any]) -> tuple[Forecast | None, Action]:
        t = obs.time
        now = self.home.last.now if self.home.last is not None else self.clock.now()
        if isinstance(self.forecast, Observing) and self.home.metered():
            # the inverter metered the step that just ended: the learned forecasters' history
            self.forecast.observe(t - pd.Timedelta(seconds=self.settings.step_s), P_pv=obs.P_pv, P_load=obs.P_load)
        reporter = self.controller if isinstance(self.controller, Reporter) else None
        n_ev = len(reporter.events) if reporter is not None else 0
        t0 = time.perf_counter()
        reason = ""
        fc: Forecast | None = None
        action = Action()
        try:
            fc = self.forecast(t)
        except Exception as exc:  # noqa: BLE001 - a forecast source that fails is a solver fault
            log.exception("forecast failed")
            reason = f"forecast failed: {exc}"
        if fc is not None and self.model.cars:  # a car home early, or late: the plug as measured
            fc = with_measured_plugs(self.model.house.ev, fc, obs.ev_plugged)
        if fc is not None:
            self._prices[t] = (float(fc.price_import[0]), float(fc.price_export[0]))
            rec["forecast_now"] = forecast_now(fc)
            for old in sorted(self._prices)[:-8]:
                del self._prices[old]
        paused = self.overrides.paused(t)
        if fc is not None:
            fc = self.overrides.apply(fc, t)  # a boosted or re-banded room: the band the controller plans with
        self._last = (obs, fc)
        if paused is not None:  # the home's own logic runs it, as on a fault, with the reason
            reason = f"paused by {paused.by or 'the user'} until {paused.until}"
        elif fc is not None:
            try:
                action = self.overrides.limit(self.controller.act(obs, fc), obs.soc, t)
            except Exception as exc:  # noqa: BLE001 - any controller failure is a solver fault
                log.exception("controller failed")
                reason = f"controller raised {type(exc).__name__}: {exc}"
        rec["solve_s"] = time.perf_counter() - t0
        fell_back = [e for e in (reporter.events[n_ev:] if reporter is not None else []) if e.get("kind") == "fallback"]
        if fell_back:
            reason = str(fell_back[-1].get("reason", "controller fell back"))
        sources = fc.extras.get("sources") if fc is not None else None
        if sources:
            rec["forecast"] = dict(sources)
            for role, src in sources.items():
                if self._sources.get(role) != src:  # a learned forecast taken up, or given up and why
                    self.events.write("forecast_source", now, role=role, source=src)
                    log.log(logging.WARNING if src.startswith(FALLBACK) else logging.INFO, "%s forecast: %s", role, src)
            self._sources = dict(sources)
        self._check_drift(now, t)
        if isinstance(self.forecast, Fetching):  # each fetch that changed what the forecast is made of
            for r in self.forecast.fetch_reports():
                self.events.write("forecast_fetch", now, source=r.source, key=r.key, ok=r.ok, message=r.message)
        if self.events.problem is not None or self._announced is not None:
            self._announce_problem(self.events.problem or "")
        if reason:
            action = replace(action, reason=reason)
        return fc, action

    def _check_drift(self, now: pd.Timestamp, t: pd.Timestamp) -> None:
        """Once a local day: the learned forecasters' live error against the one they were accepted
        with (see :meth:`pems.live.learned.LearnedForecasts.check_drift`)."""
        if not isinstance(self.forecast, DriftWatched):
            return
        try:
            reports = self.forecast.check_drift(t)
        except Exception:  # noqa: BLE001 - a drift check never costs the control of the home
            log.exception("drift check failed")
            return
        for role, rep in reports.items():
            self.events.write("forecast_drift", now, role=role, **rep)
            if rep.get("retrain_due"):
                log.warning("%s forecast: retrain due (live MAE %.4g against %.4g accepted)", role,
                            rep.get("recent_mae", math.nan), rep.get("reference_mae", math.nan))

    # ------------------------------------------------------------------ the home's listener
    def on_tick(self, sample: Any) -> None:
        self.systemd.alive()

    def on_commanded(self, t: pd.Timestamp, record: dict[str, Any]) -> None:
        self.systemd.status(f"step {t.isoformat()}: {record.get('state', '')}")
        self._save(self.clock.now(), t)
        if self._last is not None:
            obs, fc = self._last
            self._log_band(t, fc)
            try:
                self.counterfactual.on_step(obs, fc)
                self.view.on_step(obs, record, self.plant.step_plan(record), fc, saved=self.counterfactual.saved)
            except Exception:  # noqa: BLE001 - the page's data never costs the control of the home
                log.exception("recording the step for the web page failed")

    def _log_band(self, t: pd.Timestamp, fc: Forecast | None) -> None:
        """The comfort band (overrides applied) and the prices the step was planned with, into InfluxDB
        (``kind=planned``, ``horizon=0``: the dashboard's rooms against their bands, and its prices)."""
        if self.influx is None or fc is None or len(fc) == 0:
            return
        try:
            values: dict[str, float] = {"price_import": float(fc.price_import[0]),
                                        "price_export": float(fc.price_export[0])}
            for j, r in enumerate(fc.rooms):
                values[f"T_low__{r}"], values[f"T_high__{r}"] = float(fc.low[0, j]), float(fc.high[0, j])
            self.influx.write(t, values, "planned", tags={"horizon": "0"})
        except Exception:  # noqa: BLE001 - the log never stops the loop
            log.exception("influx write of the band failed")

    def _estimate(self) -> np.ndarray | None:
        """The controller's state estimate now (None: it keeps none)."""
        snap = self.controller.snapshot() if isinstance(self.controller, Stateful) else None
        return None if snap is None else np.asarray(snap.x, dtype=float)

    def price_of(self, t: pd.Timestamp) -> tuple[float, float] | None:
        """Import and export price [currency per kWh] of the step starting at ``t``, as the forecast
        had them when it was planned (None: not known)."""
        return self._prices.get(t)

    def health(self) -> dict[str, Any]:
        """The adapters' and the watchdog's state, for the web page (read from its threads)."""
        last = self.home.last
        out: dict[str, Any] = {
            "watchdog": self.watchdog.state, "mode": self.mode, "steps": self.home.k, "late_steps": self.overruns,
            "dry_run": self.settings.dry_run, "last_reading": None if last is None else last.now.isoformat(),
        }
        if last is not None:
            ages = [a for a in last.rooms.age_s.values() if math.isfinite(a)]
            out["rooms_bus"] = {"connected": bool(last.rooms.connected), "gateway_online": last.rooms.gateway_online,
                                "oldest_reading_s": round(max(ages), 1) if ages else None}
            if self.inverter is not None:
                out["inverter"] = {"ok": bool(last.inverter is not None and last.inverter.ok)}
        if self.influx is not None:
            st = self.influx.status()
            out["influx"] = {"connected": bool(st.connected), "pending_lines": st.pending_lines}
        if self.home_assistant is not None:
            out["home_assistant"] = {"connected": bool(self.home_assistant.connected)}
        for key, st in (self.forecast.fetch_status() if isinstance(self.forecast, Fetching) else {}).items():
            out[f"forecast_{key}"] = {"source": st["source"], "state": st["state"], "fetched": st["last_ok"],
                                      **({"error": st["last_error"]} if st["last_error"] else {})}
        return out

    def _save(self, now: pd.Timestamp, t: pd.Timestamp) -> None:
        if self.store is None:
            return
        snap = self.controller.snapshot() if isinstance(self.controller, Stateful) else None
        x, d = (None, None) if snap is None else (snap.x, snap.last_d)
        try:
            self.store.save(self.home.state(now, t, x, d))
        except OSError as exc:  # a full disk must not stop the control of the home
            log.error("cannot save the loop state: %s", exc)

    def _announce_problem(self, text: str) -> None:
        """The event log's trouble (or its end, ``""``) on the bus, where the home can show it.

        Also called every control step: a problem found before the bus was connected, or lost with a
        connection, is said (once per connection) when it can be."""
        home = self.home
        key = (text, home.bus.connections)
        if key == self._announced:
            return
        rec = home.bus.announce_problem(text)
        if rec is not None and rec.sent:
            self._announced = key
