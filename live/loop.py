"""The live closed loop: read → estimate → forecast → solve → translate → write, with a watchdog.

:class:`LiveLoop` runs one home through the device protocols of :mod:`pems.live.devices` (a real
Loxone + Growatt, or the emulator behind the same sockets):

**Control step** (every ``step_s``, 15 min): read the room bus and the inverter; build the
:class:`~pems.twin.signals.Observation` (temperatures now; PV, battery, grid and load powers as
means of the inner loop's samples over the step that ended; heating power as the on-time the loop
commanded, or the sampled relay states where the home's thermostats were in charge); ask the
controller (its own Kalman estimator turns the observation into the full state) for an
:class:`~pems.twin.signals.Action` on the forecast; bound it; translate it (below); write it; log
it; save the state.

**Inner loop** (every ``inner_s``, 1 min): sample both devices (the step's power means), run the
watchdog (:mod:`pems.live.safety`), switch relays off when their on-time is over, and in fallback
keep handing control back until the home has it.

Translation
-----------
*Heating*: ``heat_w`` → duty = heat / rating → on-time = duty × step, rounded to the inner tick with
the rounding carried to the next step (so energy is unbiased). Relays are on **from the step's
start** for their on-time, then off — the same realisation as the simulator's plant
(:class:`~pems.twin.plant.SimulatedHome`), so that live and simulated runs compare; one on and one
off per room and step is also the relay rate limit. The on-time is counted from the moment the
"on" was sent, and the inner ticks are timed from that moment, so a late solve shifts the pulse but
does not shorten it.

*Battery*: ``bat_w`` (AC, charge +) → :class:`~pems.live.devices.BatteryCommand`:

- ``|bat_w| < hold_w`` → hold: ``battery_first`` at 0 % (the battery neither charges nor covers);
- ``bat_w > 0`` → ``battery_first`` at ``bat_w / max_charge`` with AC charge when the forecast PV
  cannot deliver it alone;
- ``bat_w < 0`` and within ``cover_tol_w`` of the expected deficit (load + heating − PV) →
  ``load_first``: the inverter covers the house's actual load (better than a fixed rate when the
  load forecast is off);
- other discharges → ``grid_first`` at ``−bat_w / max_discharge`` down to ``soc_min``.
- ``bat_w is None`` (a rule-based action) → ``load_first``, slots cleared (the inverter's own logic).

Battery-first and grid-first slots end one inner tick after the next step's start: re-commanded each
step (the write guard then rewrites only the slot's end), they lapse to load first within a step and
a tick of the loop's last command when it dies (a dead man's switch: the Growatt's slots repeat
daily, so a slot left standing would steer the battery every day).

Timing
------
The loop schedules on its clock's **monotonic** time (``clock.monotonic()``; never jumps), aligned
once to the calendar's step grid, and labels steps with the calendar (``clock.now()`` floored to
the step): a calendar jump is a watchdog fault, not a skipped or repeated step. With the emulator
both run on one :class:`~pems.live.clock.SimClock` (accelerated); a real home uses
:class:`WallClock`. A step that starts late (the machine was busy) runs at once and is logged as an
overrun; it is never skipped, so the log has one step record per step.

Accelerated, wall-time work would be stretched by the speed-up: a 0.3 s solve is 0.03 % of a
15-minute step at home but a third of one at 1000×, and every relay pulse would start that much
later. While the loop forecasts and solves (and while it awaits its first data), a clock that can
(:meth:`~pems.live.clock.SimClock.real_time`) runs at real-time rate, so the emulated home gives
that work the share of a step it has in reality (``LoopSettings.real_time_solve``).
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pems.controllers.base import EstimatorState, Planner, Reporter, Stateful
from pems.live.devices import BatteryCommand, Inverter, InverterReadings, RoomBus, RoomReadings, WriteRecord
from pems.live.event_log import EventLog
from pems.live.guard import Guard
from pems.live.learned import FALLBACK
from pems.live.safety import BatteryLimits, SafetyLimits, Watchdog, bound_battery, bound_heat
from pems.live.state import LoopState, StateStore
from pems.live.translate import battery_command
from pems.twin.model import HouseModel
from pems.twin.signals import Action, Forecast, Observation
from pems.twin.thermostat import Thermostat

log = logging.getLogger(__name__)

ForecastFn = Callable[[pd.Timestamp], Forecast]


# ---------------------------------------------------------------------------------------------
# settings and the translation of an action
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LoopSettings:
    """How the loop runs (times in the clock's seconds).

    Attributes
    ----------
    step_s
        Control step [s] (the controller's).
    inner_s
        Inner-loop tick [s]: relay resolution, sampling and watchdog period. Divides ``step_s``.
    settle_s
        Delay after a step's start before reading [s] (emulation: lets the tick's publications
        arrive; 0 for a real home).
    hold_w
        Battery commands smaller than this are "hold" [W].
    cover_tol_w
        A discharge within this of the expected deficit is left to load first [W].
    state_max_age_steps
        Saved state older than this many steps is not resumed.
    dry_run
        Compute and log everything, write nothing (the adapters are built dry too).
    real_time_solve
        While forecasting and solving (and awaiting the first data), run an accelerated clock at
        real-time rate (:meth:`~pems.live.clock.SimClock.real_time`): the solve then takes the
        share of a step it takes at home, not ``speed`` times more. No effect on a wall clock.
    deadline_s
        Longest a control step or an inner tick may take before the guard hands the home back
        (:mod:`pems.live.guard`; None: half a control step) [s].
    """

    step_s: float = 900.0
    inner_s: float = 60.0
    settle_s: float = 0.0
    hold_w: float = 50.0
    cover_tol_w: float = 150.0
    state_max_age_steps: float = 2.0
    dry_run: bool = False
    real_time_solve: bool = True
    deadline_s: float | None = None

    @property
    def deadline(self) -> float:
        """The deadline in force [s]."""
        return self.step_s / 2 if self.deadline_s is None else float(self.deadline_s)

    def __post_init__(self) -> None:
        if self.deadline_s is not None and not self.deadline_s > 0:
            raise ValueError(f"deadline_s must be positive, got {self.deadline_s}")
        n = self.step_s / self.inner_s
        if not (self.inner_s > 0 and abs(n - round(n)) < 1e-9 and n >= 1):
            raise ValueError(f"inner_s {self.inner_s} must divide step_s {self.step_s}")


@dataclass
class _StepAccum:
    """The inner loop's samples over the current step (for the observation's means)."""

    inv: list[InverterReadings] = field(default_factory=list)
    relay: list[dict[str, float]] = field(default_factory=list)
    fallback_seen: bool = False


class LiveLoop:
    """One home, one controller, one clock (see the module notes).

    Parameters
    ----------
    model
        The house model (room order, heater ratings, battery).
    controller
        Any controller (``reset``/``act``). One that is :class:`~pems.controllers.base.Stateful` has its
        estimate saved every step and resumed after a restart; a
        :class:`~pems.controllers.base.Planner`'s plan and a :class:`~pems.controllers.base.Reporter`'s
        events go into the log.
    forecast
        Calendar time of a step's start → the forecast from it.
    rooms
        The room bus (:class:`~pems.live.loxone.LoxoneMqtt`).
    inverter
        The inverter (:class:`~pems.live.growatt.GrowattModbus`) or None.
    clock
        :class:`~pems.live.clock.SimClock`, :class:`WallClock`, or :class:`JumpClock`.
    settings, limits
        Loop settings and watchdog thresholds.
    events_path
        ``events.jsonl`` (appended), or None to keep events in memory only (:attr:`events`).
    state_dir
        Folder of the persistent state and its lock, or None (no persistence).
    influx
        Optional :class:`~pems.live.influx_log.InfluxLog` (measured, commanded, events).
    """

    def __init__(self, model: HouseModel, controller: Any, forecast: ForecastFn, rooms: RoomBus,
                 inverter: Inverter | None, clock: Any, settings: LoopSettings | None = None,
                 limits: SafetyLimits | None = None, events_path: str | Path | None = None,
                 state_dir: str | Path | None = None, influx: Any = None) -> None:
        self.model = model
        self.controller = controller
        self.forecast = forecast
        self.bus = rooms
        self.inverter = inverter
        self.clock = clock
        self.settings = settings or LoopSettings()
        self.rooms: tuple[str, ...] = tuple(model.rooms)
        self.rating = np.asarray(model.u_max[model.heat], dtype=float)
        lim = model.limits
        self.bat_limits = (BatteryLimits(lim.max_charge_w, lim.max_discharge_w, lim.soc_min, lim.soc_max)
                           if model.has_battery and inverter is not None else None)
        self.watchdog = Watchdog(self.rooms, limits or SafetyLimits(), has_inverter=inverter is not None)
        self._announced: tuple[str, int] | None = None  # the problem text on the bus, and on which connection
        self.events = EventLog(events_path, on_problem=self._announce_problem)
        self.store = StateStore(state_dir) if state_dir is not None else None
        self.influx = influx
        self.n_inner = int(round(self.settings.step_s / self.settings.inner_s))
        # what the loop believes the home is doing
        self.mode: str = "home"  # "pems" once the loop has taken the rooms
        self.relays: dict[str, bool] = dict.fromkeys(self.rooms, False)
        self.battery: BatteryCommand | None = None
        self.residual_s: dict[str, float] = dict.fromkeys(self.rooms, 0.0)
        # device writes and what the loop believes of the devices, from the loop's and the guard's threads
        self._io = threading.RLock()
        self.guard = Guard(clock, self._deadline_missed, self._end_pulses,
                           heartbeat=self._beat if hasattr(rooms, "heartbeat") else None,
                           heartbeat_s=self.settings.inner_s)
        self._on_s: np.ndarray = np.zeros(len(self.rooms))  # commanded on-time of the current step [s]
        # set-points a controller asked for (the rule-based baselines), realised by the one thermostat
        # at every inner tick; None while it asks for powers
        self._setpoint: np.ndarray | None = None
        self._pulse_end: dict[str, float] = {}  # room → monotonic end of its partial pulse this step [s]
        self._thermostat = Thermostat(model.house.heating.thermostat_hysteresis_k)
        self._pending_home = False
        self._pending_release = False
        self._acc = _StepAccum()
        self._soc = math.nan
        self._bus_connections = -1
        self._log_up: bool | None = None  # the InfluxDB log's last known state
        self._online_said = False  # the bus was told the loop is online (after its first fresh commands)
        self._unsent: dict[tuple[str, str, str, str], int] = {}  # refused writes logged once: repeats since
        self._problems: dict[str, str] = {}  # measured values not used, by key: the kind of problem
        self._sources: dict[str, str] = {}  # where the learned forecast columns came from last step
        self._step_logged = False  # the current control step's "step" event is written
        self._stop = threading.Event()
        self._steps = 0
        self.overruns = 0
        self._started = False
        self.handed_back: dict[str, str] = {}  # what the last close() handed back, per device

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Lock the state folder, resume or start safe, connect the devices."""
        if self._started:
            return
        if self.store is not None:
            self.store.lock()
        on_start = getattr(self.forecast, "on_start", None)
        if on_start is not None:  # the forecast's own files in the state folder: ours now
            on_start()
        self.controller.reset()
        now = self.clock.now()
        resumed = False
        if self.store is not None:
            st, why = self.store.load(now, self.settings.state_max_age_steps * self.settings.step_s, self.rooms)
            if st is not None:
                resumed = self._restore(st)
            self.events.write("state", now, resumed=resumed, why=why)
        self.bus.connect()
        if self.inverter is not None:
            self.inverter.connect()
        self.guard.start()
        self._inverter_baseline(now)
        self.events.write("start", now, dry_run=self.settings.dry_run, rooms=list(self.rooms),
                          step_s=self.settings.step_s, inner_s=self.settings.inner_s, resumed=resumed)
        if not resumed:
            # A fresh start: whatever an earlier loop left behind, the home runs itself until the
            # first healthy step takes over (idempotent when it already does).
            self._give_back(now)
        self._started = True

    def _inverter_baseline(self, now: pd.Timestamp) -> None:
        """The owner's inverter settings, given back at every hand-back: recorded once, before the loop
        first writes, and kept in the state folder across restarts (see
        :meth:`~pems.live.state.StateStore.load_baseline`)."""
        inv = self.inverter
        if inv is None or not hasattr(inv, "settings"):
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
        self.mode = st.mode if st.mode in ("pems", "home") else "home"
        self.relays = {r: bool(st.relays.get(r, False)) for r in self.rooms}
        self.residual_s = {r: float(st.duty_residual_s.get(r, 0.0)) for r in self.rooms}
        self.battery = st.battery_command()
        return True

    def stop(self) -> None:
        """Ask :meth:`run` to end after the current tick."""
        self._stop.set()

    def close(self, handback: bool = True) -> dict[str, str]:
        """Hand the home back (unless ``handback`` is False: a simulated crash), disconnect, unlock.

        The hand-back to both devices comes first, each device on its own: no logging, state or
        file error can prevent or delay it. Returns what was handed back, per device: ``"sent"``,
        ``"dry-run"`` or ``"not sent: <why>"`` (also in the ``stop`` event, and in
        :attr:`handed_back`).
        """
        now = self.clock.now()
        report: dict[str, str] = {}
        self.guard.cancel_offs()
        if handback and self._started:
            report = self._give_back(now)
        self.guard.stop()
        self.handed_back = report
        for step in (lambda: self._save(now, now) if handback and self._started else None,
                     lambda: self.events.write("stop", now, handback=report or False, steps=self._steps,
                                               overruns=self.overruns,
                                               unsent_repeats=sum(self._unsent.values()))):
            try:
                step()
            except Exception:  # noqa: BLE001 - nothing after the hand-back may stop the shutdown
                log.exception("shutdown bookkeeping failed")
        try:
            self.bus.close()
        except Exception:  # noqa: BLE001
            log.exception("closing the room bus failed")
        finally:
            if self.inverter is not None:
                try:
                    self.inverter.close()
                except Exception:  # noqa: BLE001
                    log.exception("closing the inverter connection failed")
            if self.influx is not None:
                try:
                    if self.influx.status().connected:  # when down, the spool keeps it all
                        self.influx.flush(5.0)
                except Exception:  # noqa: BLE001 - the log must not stop the shutdown
                    log.exception("influx flush failed")
            if self.store is not None:
                try:
                    self.store.unlock()
                except Exception:  # noqa: BLE001
                    log.exception("unlocking the state folder failed")
            self.events.close()
            self._started = False
        return report

    # ------------------------------------------------------------------ running
    def _at(self, mono_s: float) -> pd.Timestamp:
        return self.clock.start + pd.Timedelta(seconds=mono_s)

    def first_step_mono(self) -> float:
        """Monotonic time of the first step: the next boundary of the calendar's step grid."""
        now, mono = self.clock.now(), self.clock.monotonic()
        step = pd.Timedelta(seconds=self.settings.step_s)
        t = now.ceil(step)
        return mono + (t - now).total_seconds()

    def run(self, n_steps: int | None = None, first_mono: float | None = None) -> int:
        """Run control steps until :meth:`stop` (or ``n_steps``); returns the steps run.

        Calls :meth:`start` if needed; does not :meth:`close` (the caller decides on hand-back).
        """
        self.start()
        s = self.settings
        m = self.first_step_mono() if first_mono is None else first_mono
        k = 0
        while not self._stop.is_set() and (n_steps is None or k < n_steps):
            m_k = m + k * s.step_s
            if not self.clock.sleep_until(self._at(m_k + s.settle_s), self._stop):
                break
            if k == 0:
                self._await_first_data(m_k + s.settle_s + s.inner_s / 2)
            late = self.clock.monotonic() - (m_k + s.settle_s)
            if late > s.inner_s:
                self.overruns += 1
                self.events.write("overrun", self.clock.now(), late_s=late, step=k)
            self.guard.arm(f"control step {k}", self.clock.monotonic() + s.deadline)
            try:
                sent_mono = self.control_step()
            except Exception as exc:  # noqa: BLE001 - see _step_failed
                sent_mono = self._step_failed("control step", exc)
            self.guard.disarm()
            # inner ticks timed from the moment the step's commands went out (see the module notes)
            j = 1
            while True:
                tick = sent_mono + j * s.inner_s
                if tick >= m_k + s.step_s + s.settle_s - 1e-6 or self._stop.is_set():
                    break
                if not self.clock.sleep_until(self._at(tick), self._stop):
                    break
                self.guard.arm(f"inner tick {j} of step {k}", self.clock.monotonic() + s.deadline)
                try:
                    self.inner_tick()
                except Exception as exc:  # noqa: BLE001 - see _step_failed
                    self._step_failed("inner tick", exc)
                self.guard.disarm()
                j += 1
            k += 1
        return k

    def _check_drift(self, now: pd.Timestamp, t: pd.Timestamp) -> None:
        """Once a local day: the learned forecasters' live error against the one they were accepted
        with (see :meth:`pems.live.learned.LearnedForecasts.check_drift`)."""
        check = getattr(self.forecast, "check_drift", None)
        if check is None:
            return
        try:
            reports = check(t)
        except Exception:  # noqa: BLE001 - a drift check never costs the control of the home
            log.exception("drift check failed")
            return
        for role, rep in reports.items():
            self.events.write("forecast_drift", now, role=role, **rep)
            if rep.get("retrain_due"):
                log.warning("%s forecast: retrain due (live MAE %.4g against %.4g accepted)", role,
                            rep.get("recent_mae", math.nan), rep.get("reference_mae", math.nan))

    def _step_failed(self, where: str, exc: Exception) -> float:
        """An unforeseen error in a step (a defect, a failing disk, a library surprise) must neither
        leave the home under commands nobody follows up nor end the loop: the home gets its own
        logic back at once, the error is logged with its reason, the watchdog counts it as a solver
        fault, and the next step tries again. Returns the monotonic time [s] of the hand-back."""
        log.exception("%s failed; the home runs itself", where)
        now = self.clock.now()
        reason = f"{where} raised {type(exc).__name__}: {exc}"
        self.events.write("step_error", now, reason=reason)
        self.watchdog.solver_result(False, reason)
        if where == "control step" and not self._step_logged:  # the step log has no gap
            t = now.floor(pd.Timedelta(seconds=self.settings.step_s))
            self.events.write("step", t, step=self._steps, mono_s=self.clock.monotonic(), state=self.watchdog.state,
                              solver_ok=False,
                              solver_reason=reason, commands="home (step error)")
            self._steps += 1
            self._step_logged = True
        if self.mode == "pems" or self._pending_home:
            self._give_back(now)  # never raises; what is not sent is retried at the next tick
        return self.clock.monotonic()

    def _await_first_data(self, until_mono: float) -> None:
        """Before the first step, wait (at most until ``until_mono``) for every room's first value:
        a loop just connected has seen only retained messages, if any."""
        # Delivery latency is wall time: at 1000× a 50 ms delay would be most of a minute of the
        # home's time, so an accelerated clock runs at real time meanwhile (as during a solve).
        speed = float(getattr(self.clock, "speed", None) or 1.0)
        wall_end = time.monotonic() + max(2.0, (until_mono - self.clock.monotonic()) / speed)
        with self._real_time():
            while time.monotonic() < wall_end and not self._stop.is_set():
                if all(math.isfinite(v) for v in self.bus.read().T_room.values()):
                    return
                time.sleep(0.002)

    # ------------------------------------------------------------------ one sample
    def _read(self) -> tuple[pd.Timestamp, float, RoomReadings, InverterReadings | None]:
        now, mono = self.clock.now(), self.clock.monotonic()
        rr = self.bus.read()
        inv = self.inverter.read() if self.inverter is not None else None
        if inv is not None and inv.changed:
            self.events.write("inverter_changed", now, changed=list(inv.changed))
            log.warning("inverter settings changed outside PEMS: %s", "; ".join(inv.changed))
        if inv is not None and inv.ok:
            self._acc.inv.append(inv)
            if math.isfinite(inv.soc):
                self._soc = inv.soc
        self._acc.relay.append(dict(rr.relay))
        return now, mono, rr, inv

    def _sample(self) -> tuple[pd.Timestamp, float, RoomReadings, InverterReadings | None, list[str]]:
        now, mono, rr, inv = self._read()
        return now, mono, rr, inv, self.watchdog.check(now, mono, rr, inv)

    def _apply_health(self, now: pd.Timestamp, faults: list[str]) -> None:
        tr = self.watchdog.update(now, faults)
        if tr is not None:
            if tr.state == "fallback":
                self.events.write("fallback", now, reasons=list(tr.reasons))
                log.warning("live loop falls back at %s: %s", now, "; ".join(tr.reasons))
                self._hand_back_due()
                self.mode = "home"
            else:
                self.events.write("recover", now, reasons=list(tr.reasons))
                log.info("live loop recovers at %s", now)
            self._influx_event(now, tr.state, "; ".join(tr.reasons))
        if self.watchdog.state == "fallback":
            self._acc.fallback_seen = True
            self._handback(now)

    def inner_tick(self) -> None:
        """Sample and check health (the guard ends relay pulses, on its own thread); under set-points,
        let the thermostat switch."""
        now, _, rr, inv, faults = self._sample()
        self._apply_health(now, faults)
        self._watch_log(now)
        if inv is not None and inv.changed and self.watchdog.state == "active" and self.mode == "pems" \
                and self.battery is not None and self.battery.priority != "load_first":
            # changed under the loop's command (the Growatt app): the command again, at once
            with self._io_lock():
                recs = self.inverter.command(self.battery)  # type: ignore[union-attr]
            self._log_writes(now, recs)
        if self._setpoint is not None and self.mode == "pems" and self.watchdog.state == "active":
            with self._io_lock():
                relays = self._thermostat_relays(rr)
                changed = {r: v for r, v in relays.items() if v != self.relays.get(r)}
                recs = self.bus.set_relays(changed) if changed else []
                self.relays.update(relays)
                self._on_s += self.settings.inner_s * np.array([relays[r] for r in self.rooms], dtype=float)
            self._log_writes(now, recs)

    def _thermostat_relays(self, rr: RoomReadings) -> dict[str, bool]:
        """The one thermostat's relays for the set-points in force, from the rooms' temperatures."""
        assert self._setpoint is not None
        T = np.array([rr.T_room.get(r, math.nan) for r in self.rooms], dtype=float)
        was = np.array([bool(self.relays.get(r)) for r in self.rooms])
        new = self._thermostat.relays(T, was, self._setpoint)
        return {r: bool(new[i]) for i, r in enumerate(self.rooms)}

    # ------------------------------------------------------------------ the control step
    def control_step(self) -> float:
        """One control step; returns the monotonic time its commands went out [s]."""
        s = self.settings
        step = pd.Timedelta(seconds=s.step_s)
        self._step_logged = False
        now, mono, rr, inv = self._read()
        t = now.floor(step)
        obs = self._observation(t, rr)
        observe = getattr(self.forecast, "observe", None)
        if observe is not None and self._steps > 0 and any(i.ok for i in self._acc.inv):
            # the inverter metered the step that just ended: the learned forecasters' history
            observe(t - step, P_pv=obs.P_pv, P_load=obs.P_load)
        self._acc = _StepAccum()
        reporter = self.controller if isinstance(self.controller, Reporter) else None
        n_ev = len(reporter.events) if reporter is not None else 0
        t0 = time.perf_counter()
        reason = ""
        fc = None
        with self._real_time():
            try:
                fc = self.forecast(t)
            except Exception as exc:  # noqa: BLE001 - a forecast source that fails is a solver fault
                log.exception("forecast failed")
                action, reason = Action(heat_w=None, bat_w=None), f"forecast failed: {exc}"
            if fc is not None:
                try:
                    action = self.controller.act(obs, fc)
                except Exception as exc:  # noqa: BLE001 - any controller failure is a solver fault
                    log.exception("controller failed")
                    action = Action(heat_w=None, bat_w=None)
                    reason = f"controller raised {type(exc).__name__}: {exc}"
        solve_s = time.perf_counter() - t0
        new_ev = reporter.events[n_ev:] if reporter is not None else []
        fell_back = [e for e in new_ev if e.get("kind") == "fallback"]
        if fell_back:
            reason = str(fell_back[-1].get("reason", "controller fell back"))
        ok = not reason and (action.heat_w is not None or action.heat_setpoint_c is not None)
        if not ok and not reason:
            reason = "controller gave neither heater powers nor set-points"
        self.watchdog.solver_result(ok, reason)
        # the step's sample is checked after the solve, so the solver rule counts this step too
        all_faults = self.watchdog.check(now, mono, rr, inv)
        self._apply_health(now, all_faults)
        record: dict[str, Any] = {"step": self._steps, "mono_s": mono, "state": self.watchdog.state,
                                  "faults": all_faults, "T_room": dict(rr.T_room), "T_out": obs.T_out,
                                  "soc": obs.soc, "P_heat": obs.P_heat, "P_pv": obs.P_pv, "P_load": obs.P_load,
                                  "P_grid": obs.P_grid, "P_bat": obs.P_bat, "solve_s": solve_s,
                                  "solver_ok": ok}
        if not ok:
            record["solver_reason"] = reason
            self.events.write("solver_fallback", now, reason=reason)
        sources = fc.extras.get("sources") if fc is not None else None
        if sources:
            record["forecast"] = dict(sources)
            for role, src in sources.items():
                if self._sources.get(role) != src:  # a learned forecast taken up, or given up and why
                    self.events.write("forecast_source", now, role=role, source=src)
                    log.log(logging.WARNING if src.startswith(FALLBACK) else logging.INFO,
                            "%s forecast: %s", role, src)
            self._sources = dict(sources)
        self._check_drift(now, t)
        if self.events.problem is not None or self._announced is not None:
            self._announce_problem(self.events.problem or "")
        sent_mono = self.clock.monotonic()
        if self.guard.overdue:
            # the guard handed the home back while this step was busy: its plan is too late to use
            ok = False
            record.update(solver_ok=False, solver_reason=f"deadline: the step took longer than {s.deadline:g} s",
                          commands="none (deadline missed)")
            self.watchdog.solver_result(False, record["solver_reason"])
        elif self.watchdog.state == "active":
            if not ok:
                # the controller's own fallback (rule-based set-points): the home's thermostats do
                # exactly that, and the inverter runs itself
                self._give_back(now)
                record["commands"] = "home (controller fallback)"
            else:
                sent_mono = self._command(now, t, action, fc, record)
        else:
            record["commands"] = "none (fallback)"
        self._steps += 1
        self.events.write("step", t, **record)
        self._step_logged = True
        if log.isEnabledFor(logging.INFO):
            heat = record.get("heat_w")
            bat = record.get("battery")
            log.info("step %s %s: heat %s, battery %s (solve %.2f s)", t.isoformat(), self.watchdog.state,
                     "—" if heat is None else f"{float(np.sum(heat)) / 1000:.2f} kW",
                     "—" if bat is None else f"{bat['priority']} {bat.get('power_pct') or 0:.0f} %", solve_s)
        self._save(now, t)
        self._influx_step(t, obs, record)
        self._watch_log(now)
        return sent_mono

    def _real_time(self) -> contextlib.AbstractContextManager[Any]:
        """Forecast and solve with the clock at real-time rate where it can (``real_time_solve``)."""
        real_time = getattr(self.clock, "real_time", None)
        if self.settings.real_time_solve and real_time is not None:
            return real_time()
        return contextlib.nullcontext()

    def _observation(self, t: pd.Timestamp, rr: RoomReadings) -> Observation:
        acc, s = self._acc, self.settings
        rooms = self.rooms
        T = np.array([rr.T_room.get(r, math.nan) for r in rooms], dtype=float)
        if self._steps == 0:
            p_heat = np.zeros(len(rooms))
        elif not acc.fallback_seen and self.mode == "pems" and not s.dry_run:
            # what the loop switched (known to the tick); a dry run switched nothing: measured below
            p_heat = self.rating * np.clip(self._on_s / s.step_s, 0.0, 1.0)
        else:
            rel = np.array([[row.get(r, math.nan) for r in rooms] for row in acc.relay] or [np.zeros(len(rooms))])
            p_heat = self.rating * np.nan_to_num(np.nanmean(np.where(np.isfinite(rel), rel, np.nan), axis=0)
                                                 if np.isfinite(rel).any() else np.zeros(len(rooms)))
        inv = acc.inv
        if inv and self._steps > 0:
            p_pv = float(np.mean([i.P_pv for i in inv]))
            p_bat = float(np.mean([i.P_charge - i.P_discharge for i in inv]))
            p_grid = float(np.mean([i.P_import - i.P_export for i in inv]))
            p_house = float(np.mean([i.P_load for i in inv]))
        else:
            p_pv = p_bat = p_grid = 0.0
            p_house = float(np.sum(p_heat))
        t_out = rr.T_out
        why = self.watchdog.outdoor(t_out)
        if why is not None:  # never into the estimator: the forecast's value instead (below)
            self._problem("T_out", why)
            t_out = math.nan
        else:
            self._problems.pop("T_out", None)
        soc = None
        if self.model.has_battery:
            soc = self._soc if math.isfinite(self._soc) else None
        obs = Observation(time=t, T_room=T, soc=soc, T_out=t_out, P_pv=p_pv,
                          P_load=max(0.0, p_house - float(np.sum(p_heat))), P_grid=p_grid, P_bat=p_bat,
                          P_heat=p_heat)
        if not math.isfinite(t_out):  # no outdoor sensor (or it failed): the forecast's value now
            try:
                t_out = float(self.forecast(t).column("T_out")[0])
            except Exception:  # noqa: BLE001 - the estimator then predicts with the forecast anyway
                t_out = 0.0
            obs = replace(obs, T_out=t_out)
        return obs

    def _command(self, now: pd.Timestamp, t: pd.Timestamp, action: Action, fc: Forecast,
                 record: dict[str, Any]) -> float:
        with self._io_lock():
            return self._command_locked(now, t, action, fc, record)

    def _command_locked(self, now: pd.Timestamp, t: pd.Timestamp, action: Action, fc: Forecast,
                        record: dict[str, Any]) -> float:
        s = self.settings
        if action.heat_w is None:  # set-points: the thermostat now, and at every inner tick
            return self._command_setpoints(now, t, action, fc, record)
        self._setpoint = None
        heat = bound_heat(action.heat_w, self.rating)
        duty = np.divide(heat, self.rating, out=np.zeros_like(heat), where=self.rating > 0)
        on_s = np.zeros(len(self.rooms))
        mono = self.clock.monotonic()
        pending = self.guard.pending_offs()
        running = {r: t for r, t in self._pulse_end.items() if r in pending}
        for i, r in enumerate(self.rooms):
            # a pulse of the last step still running (the step started late) keeps its remaining
            # on-time: lateness shifts energy, never loses it
            carry = max(0.0, running.get(r, mono) - mono) if self.relays.get(r) else 0.0
            want = duty[i] * s.step_s + self.residual_s[r] + carry
            q = min(s.step_s, max(0.0, round(want / s.inner_s) * s.inner_s))
            # carry the rounding (bounded: a saturated room does not bank energy for later)
            self.residual_s[r] = float(np.clip(want - q, -s.inner_s, s.inner_s))
            on_s[i] = q
        self._on_s = on_s
        relays = {r: bool(on_s[i] > 0) for i, r in enumerate(self.rooms)}
        records = self.bus.set_relays(relays)
        sent_mono = self.clock.monotonic()
        # a pulse ends at its on-time; a full step's pulse two ticks after the step's end unless the next
        # step's command renews it first (the grace absorbs a late start of the next step): a hung
        # next step never keeps a relay on until its deadline
        self._pulse_end = {r: sent_mono + on_s[i] for i, r in enumerate(self.rooms) if 0 < on_s[i] < s.step_s}
        self.guard.schedule_offs({**{r: sent_mono + s.step_s + 2 * s.inner_s for i, r in enumerate(self.rooms)
                                     if on_s[i] >= s.step_s}, **self._pulse_end})
        self.relays = relays
        records += self._take_rooms()
        self._log_writes(now, records)
        record.update(heat_w=heat, on_s=on_s, relays=relays)
        self._command_battery(now, t, action.bat_w, fc, float(heat.sum()), record)
        return sent_mono

    def _command_setpoints(self, now: pd.Timestamp, t: pd.Timestamp, action: Action, fc: Forecast,
                           record: dict[str, Any]) -> float:
        """Set-points (a rule-based controller): the one thermostat switches the relays now and at every
        inner tick, as the simulator's home does at its fine step."""
        self._setpoint = np.asarray(action.heat_setpoint_c, dtype=float)
        self.guard.cancel_offs()
        relays = self._thermostat_relays(self.bus.read())
        records = self.bus.set_relays(relays)
        sent_mono = self.clock.monotonic()
        self.relays = relays
        on = np.array([relays[r] for r in self.rooms], dtype=float)
        self._on_s = self.settings.inner_s * on  # grows at every inner tick (the observation's heating)
        records += self._take_rooms()
        self._log_writes(now, records)
        record.update(setpoint_c=self._setpoint, relays=relays)
        self._command_battery(now, t, action.bat_w, fc, float(self.rating @ on), record)
        return sent_mono

    def _take_rooms(self) -> list[WriteRecord]:
        """Mode ``pems`` where needed (see :meth:`_command_locked`); the loop holds the rooms after."""
        records: list[WriteRecord] = []
        # mode after the relays, so the rooms switch over to the loop with the right relay state;
        # sent when the loop did not hold the rooms, after a reconnection, or when a room reports
        # another mode (at most once per step: the mode rate limit)
        reported = self.bus.modes() if hasattr(self.bus, "modes") else {}
        conns = getattr(self.bus, "connections", 0)
        if (self.mode != "pems" or conns != self._bus_connections
                or any(v not in (None, "pems") for v in reported.values())):
            records += self.bus.set_mode("pems")
            self._bus_connections = conns
        self.mode = "pems"
        # "online" only now, after fresh commands: a home that trusts the status must not resume a
        # dead loop's relay commands in the seconds before the new loop's first step
        if not self._online_said and hasattr(self.bus, "announce_online") and self.bus.announce_online():
            self._online_said = True
        return records

    def _command_battery(self, now: pd.Timestamp, t: pd.Timestamp, bat_w: float | None, fc: Forecast,
                         heat_w: float, record: dict[str, Any]) -> None:
        """The battery power (None: the inverter's own load first) as an inverter mode."""
        if self.inverter is None or self.bat_limits is None:
            return
        s = self.settings
        bat = bound_battery(bat_w, self._soc, self.bat_limits)
        pv = float(fc.column("P_pv")[0]) if "P_pv" in fc.d_names else 0.0
        load = float(fc.column("P_load")[0]) if "P_load" in fc.d_names else 0.0
        until = t + pd.Timedelta(seconds=s.step_s + s.inner_s)  # the next step renews it, or it lapses
        cmd = battery_command(bat, pv, load + heat_w, self.bat_limits, s, until)
        self._log_writes(now, self.inverter.command(cmd))
        self.battery = cmd
        record.update(bat_w=bat, bat_w_plan=bat_w, battery=asdict(cmd))

    # ------------------------------------------------------------------ the guard's callbacks (its thread)
    @contextlib.contextmanager
    def _io_lock(self, timeout_s: float = 2.0) -> Iterator[None]:
        """The device lock, waited for at most ``timeout_s`` of wall time: a thread stuck holding it
        (a socket hung mid-write) must not keep the hand-back from going out (the transports are
        thread-safe; only the loop's bookkeeping could then race)."""
        got = self._io.acquire(timeout=timeout_s)
        if not got:
            log.error("device lock busy for %.0f s; writing without it", timeout_s)
        try:
            yield
        finally:
            if got:
                self._io.release()

    def _deadline_missed(self, what: str, late_s: float) -> None:
        """The guard's thread: ``what`` overran its deadline; the home gets its own logic back now."""
        now = self.clock.now()
        log.error("%s missed its deadline (%.0f s); the home runs itself", what, self.settings.deadline)
        report = self._give_back(now)
        self.events.write("deadline", now, what=what, deadline_s=self.settings.deadline, late_s=late_s,
                          handback=report)

    def _end_pulses(self, rooms: list[str]) -> None:
        """The guard's thread: these rooms' relay pulses are over."""
        with self._io_lock():
            if self.mode != "pems" or self.watchdog.state != "active":
                return  # the home's thermostats switch them now
            off = [r for r in rooms if self.relays.get(r)]
            if not off:
                return
            for r in off:
                self.relays[r] = False
            recs = self.bus.set_relays(dict.fromkeys(off, False))
        self._log_writes(self.clock.now(), recs)

    def _beat(self) -> None:
        """The guard's thread: the heartbeat the home's own logic watches (see :mod:`pems.live.guard`)."""
        self.bus.heartbeat(self.clock.now())  # type: ignore[attr-defined]

    # ------------------------------------------------------------------ fallback and logging
    def _announce_problem(self, text: str) -> None:
        """The event log's trouble (or its end, ``""``) on the bus, where the home can show it.

        Also called every control step: a problem found before the bus was connected, or lost with a
        connection, is said (once per connection) when it can be."""
        announce = getattr(self.bus, "announce_problem", None)
        if announce is None:
            return
        key = (text, getattr(self.bus, "connections", 0))
        if key == self._announced:
            return
        rec = announce(text)
        if rec is not None and rec.sent:
            self._announced = key

    def _problem(self, key: str, why: str) -> None:
        """A measured value the loop does not use: an event and a warning when the reason changes,
        not at every step (a broken sensor must not flood the log)."""
        if self._problems.get(key) == why.split(" = ")[0]:
            return
        self._problems[key] = why.split(" = ")[0]
        self.events.write("sensor", self.clock.now(), key=key, problem=why)
        log.warning("%s not used: %s", key, why)

    def _hand_back_due(self) -> None:
        """The home is to run itself: its rooms and (with one) the inverter go back to their own
        logic, sent by :meth:`_handback` and retried until they are; no relay pulse stays pending."""
        self._pending_home = True
        self._pending_release = self.inverter is not None
        self._setpoint = None
        self.guard.cancel_offs()

    def _give_back(self, now: pd.Timestamp) -> dict[str, str]:
        """The home's own logic for both devices, now (see :meth:`_hand_back_due` and :meth:`_handback`);
        the loop no longer holds the rooms. Never raises; returns :meth:`_handback`'s report."""
        self._hand_back_due()
        report = self._handback(now)
        self.mode = "home"
        return report

    def _handback(self, now: pd.Timestamp) -> dict[str, str]:
        """Keep handing control back until the home has it (retried every tick while unsent).

        Both devices are written before anything is logged, each whatever the other did. Returns,
        per device asked this time, ``"sent"``, ``"dry-run"`` or ``"not sent: <why>"``.
        """
        with self._io_lock():
            return self._handback_locked(now)

    def _handback_locked(self, now: pd.Timestamp) -> dict[str, str]:
        sent: dict[str, list[WriteRecord]] = {}
        errors: dict[str, str] = {}
        if self._pending_home:
            try:
                sent["rooms"] = self.bus.set_mode("home")
            except Exception as exc:  # noqa: BLE001 - the inverter's hand-back must still go out
                errors["rooms"] = f"{type(exc).__name__}: {exc}"
        if self._pending_release and self.inverter is not None:
            try:
                sent["inverter"] = self.inverter.release()
            except Exception as exc:  # noqa: BLE001
                errors["inverter"] = f"{type(exc).__name__}: {exc}"
        report = {dev: f"not sent: {why}" for dev, why in errors.items()}
        for dev, recs in sent.items():
            done = all(w.sent or w.reason.startswith("unchanged") or "dry-run" in w.reason for w in recs)
            if done and dev == "rooms":
                self._pending_home = False
                self.mode = "home"
            elif done:
                self._pending_release = False
                self.battery = BatteryCommand()
            if not done:
                why = sorted({w.reason for w in recs if not (w.sent or w.reason.startswith("unchanged"))})
                report[dev] = "not sent: " + "; ".join(why)
            else:
                report[dev] = "dry-run" if recs and all("dry-run" in w.reason for w in recs) else "sent"
        for recs in sent.values():
            self._log_writes(now, recs, fallback=True)
        return report

    def _log_writes(self, now: pd.Timestamp, records: list[WriteRecord], fallback: bool = False) -> None:
        """Command records into the event log. A write refused again for the same reason (a device
        that is gone: the hand-back is retried every tick) is logged once and then counted; the
        count goes with the next record of that target that is sent."""
        for w in records:
            if not w.sent and w.reason.startswith("unchanged"):
                continue  # the guard skipped a value the device already holds
            extra: dict[str, Any] = {}
            if not w.sent and w.reason != "dry-run":
                key = (w.device, w.target, str(w.value), w.reason)
                if key in self._unsent:
                    self._unsent[key] += 1
                    continue
                self._unsent[key] = 0
            elif w.sent:
                gone = [k for k in self._unsent if k[0] == w.device and k[1] == w.target]
                if gone:
                    extra["unsent_repeats"] = sum(self._unsent.pop(k) for k in gone)
            self.events.write("command", now, device=w.device, target=w.target, value=w.value, sent=w.sent,
                              reason=w.reason, fallback=fallback, **extra)

    def _save(self, now: pd.Timestamp, t: pd.Timestamp) -> None:
        if self.store is None:
            return
        snap = self.controller.snapshot() if isinstance(self.controller, Stateful) else None
        x, d = (None, None) if snap is None else (snap.x, snap.last_d)
        b = None
        if self.battery is not None:
            b = asdict(self.battery)
            b["until"] = b["until"].isoformat() if b["until"] is not None else None
        st = LoopState(saved_at=now.isoformat(), step_time=t.isoformat(), rooms=list(self.rooms),
                       estimator_x=None if x is None else [float(v) for v in x],
                       last_d=None if d is None else [float(v) for v in d], mode=self.mode,
                       relays=dict(self.relays), battery=b, duty_residual_s=dict(self.residual_s))
        try:
            self.store.save(st)
        except OSError as exc:  # a full disk must not stop the control of the home
            log.error("cannot save the loop state: %s", exc)

    def _influx_step(self, t: pd.Timestamp, obs: Observation, record: dict[str, Any]) -> None:
        if self.influx is None:
            return
        try:
            measured = {f"T_room__{r}": float(obs.T_room[i]) for i, r in enumerate(self.rooms)}
            measured.update(T_out=obs.T_out, P_pv=obs.P_pv, P_load=obs.P_load, P_grid=obs.P_grid, P_bat=obs.P_bat)
            if obs.soc is not None:
                measured["soc"] = obs.soc
            self.influx.write(t, measured, "measured")
            if "heat_w" in record:
                cmd = {f"P_heat_cmd__{r}": float(record["heat_w"][i]) for i, r in enumerate(self.rooms)}
                if record.get("bat_w") is not None:
                    cmd["P_bat_cmd"] = float(record["bat_w"])
                self.influx.write(t, cmd, "commanded")
            # the estimator's full state (the slabs no sensor sees) and the plan behind the command
            snap = self.controller.snapshot() if isinstance(self.controller, Stateful) else None
            x = None if snap is None else snap.x
            if x is not None and record.get("solver_ok"):
                m = self.model
                est = {f"T_room__{r}": float(v) for r, v in zip(self.rooms, np.asarray(x)[m.air])}
                est |= {f"T_mass__{r}": float(v) for r, v in zip(self.rooms, np.asarray(x)[m.mass])}
                if m.has_battery:
                    est["soc"] = float(x[m.i_soc])
                self.influx.write(t, est, "estimated")
            plan = self.controller.plan() if record.get("solver_ok") and isinstance(self.controller, Planner) else None
            if plan is not None:
                self.influx.write_plan(t, plan)
        except Exception:  # noqa: BLE001 - the log never stops the loop (it spools on its own)
            log.exception("influx write failed")

    def _watch_log(self, now: pd.Timestamp) -> None:
        """Log the InfluxDB log going down (it spools on disk) and coming back (it replays).

        InfluxDB being down is not a control fault: the home stays under control, nothing measured
        or commanded is lost (the spool), and ``events.jsonl`` says when and why.
        """
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
        if up:
            self.events.write("log_store", now, state="up", reason="InfluxDB reachable again; replaying the spool",
                              pending_lines=st.pending_lines)
            log.info("InfluxDB log reachable again (%d lines to replay)", st.pending_lines)
        else:
            self.events.write("log_store", now, state="down", reason=st.last_error or "InfluxDB not reachable",
                              pending_lines=st.pending_lines)
            log.warning("InfluxDB log down (%s): spooling on disk", st.last_error)

    def _influx_event(self, now: pd.Timestamp, state: str, reason: str) -> None:
        if self.influx is None:
            return
        try:
            self.influx.write(now, {"state": state, "reason": reason}, "event")
        except Exception:  # noqa: BLE001
            log.exception("influx event failed")
