"""The live home as a :class:`~pems.twin.plant.Plant`: ``reset``/``step`` over the room bus and the inverter.

:class:`LiveHome` is to a real home (or the emulator behind the same sockets) what
:class:`~pems.twin.plant.SimulatedHome` is to the twin: ``step(action)`` realises one control step's
:class:`~pems.twin.signals.Action` and returns the :class:`~pems.twin.signals.Observation` at the next
step's start. Inside the step it runs the one-minute inner ticks, as the simulator runs its fine step:

- **at the step's start** the action is translated and written (below);
- **every inner tick** both devices are sampled (the observation's power means), relay pulses end
  (on the :class:`~pems.live.guard.Guard`'s own thread, on time whatever the loop's thread does),
  set-points are realised by the one :class:`~pems.twin.thermostat.Thermostat`, an inverter changed
  under the loop's command is commanded again, and a hand-back not yet confirmed is retried;
- **at the next step's start** (plus ``settle_s``) the home is read and the observation returned.

Between ``step`` calls the controller thinks: an accelerated clock runs at real-time rate meanwhile
(``LoopSettings.real_time_solve``), so a solve takes the share of a step it takes at home.

What the home does not decide, its wrappers do, in the manner of Gymnasium's wrappers:
:class:`~pems.live.safe_home.SafeHome` (the watchdog, deadlines and hand-back on faults) and
:class:`~pems.live.logged_home.LoggedHome` (the step log and InfluxDB). A step here has an inside,
which Gymnasium's environments do not, so a wrapper also hears it as a :class:`HomeListener`
(``on_tick``, ``on_commanded``, ``on_error``).

Translation
-----------
*Heating*: ``heat_w`` → duty = heat / rating → on-time = duty × step, rounded to the inner tick with
the rounding carried to the next step (so energy is unbiased). Relays are on **from the step's
start** for their on-time, then off: the simulator's realisation, so that live and simulated runs
compare; one on and one off per room and step is also the relay rate limit. The on-time counts from
the moment the "on" was sent, and the inner ticks are timed from that moment, so a late solve shifts
the pulse but does not shorten it. ``heat_setpoint_c`` (the rule-based baselines) → the thermostat
switches the relays now and at every tick. An action with neither → the home's own logic.

*Cars*: ``ev_w`` → each car's evcc loadpoint (:class:`~pems.live.evcc.EvccLoadpoint`): ``off``, or
``now`` at the phases and current that give the power; ``ev_w = None`` (a rule-based controller's
plain wallbox, or the home's own logic) hands the cars to evcc's own mode. Their plug, state of
charge and charging power come back in the observation (the power as the mean of the step's ticks;
the household load is the inverter's house load less heating and cars).

*Battery*: ``bat_w`` → a :class:`~pems.live.devices.BatteryCommand` (:func:`~pems.live.translate.battery_command`)
whose slot ends one inner tick after the next step's start: re-commanded each step, it lapses to
the inverter's own logic within a step and a tick of the loop's last command (a dead man's switch).

Timing
------
Steps are scheduled on the clock's **monotonic** time, aligned once to the calendar's step grid, and
labelled with the calendar (``clock.now()`` floored to the step): a calendar jump is a watchdog
fault, not a skipped or repeated step. A step that starts late runs at once and is counted as an
overrun; it is never skipped.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from pems.live.clock import Accelerated
from pems.live.devices import BatteryCommand, Inverter, InverterReadings, RoomBus, RoomReadings, WriteRecord
from pems.live.event_log import EventLog
from pems.live.evcc import reported_soc
from pems.live.guard import Guard
from pems.live.safety import BatteryLimits, bound_battery, bound_heat
from pems.live.state import LoopState
from pems.live.translate import battery_command
from pems.twin.model import HouseModel
from pems.twin.signals import Action, Forecast, Observation
from pems.twin.thermostat import Thermostat

log = logging.getLogger(__name__)

ForecastFn = Callable[[pd.Timestamp], Forecast]


@dataclass(frozen=True)
class LoopSettings:
    """How the live home runs (times in the clock's seconds).

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
        While the controller thinks (and while awaiting the first data), run an accelerated clock
        at real-time rate (:meth:`~pems.live.clock.SimClock.real_time`): the solve then takes the
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


@dataclass(frozen=True)
class Sample:
    """One reading of both devices."""

    now: pd.Timestamp  # calendar time of the reading
    mono: float  # the clock's monotonic time [s]
    rooms: RoomReadings
    inverter: InverterReadings | None
    cars: tuple[Any, ...] = ()  # each car's loadpoint readings (:class:`~pems.live.evcc.EvccReadings`)


def quietly(action: Callable[[], object], what: str) -> None:
    """Run ``action``; an error is logged as ``what failed``, never raised (shutdown steps: none may
    keep the next from running)."""
    try:
        action()
    except Exception:  # noqa: BLE001
        log.exception("%s failed", what)


class HomeListener:
    """What a wrapper hears from inside a step (each a no-op unless overridden)."""

    def on_tick(self, sample: Sample) -> None:
        """An inner tick's reading (before the home acts on it)."""

    def on_commanded(self, t: pd.Timestamp, record: dict[str, Any]) -> None:
        """The step starting at ``t`` has its commands out; ``record`` says what was commanded and why."""

    def on_error(self, where: str, exc: Exception) -> None:
        """An unforeseen error in the step (the home is being handed back)."""


@dataclass
class _StepAccum:
    """The inner loop's samples over the current step (for the observation's means)."""

    inv: list[InverterReadings] = field(default_factory=list)
    relay: list[dict[str, float]] = field(default_factory=list)
    ev: list[np.ndarray] = field(default_factory=list)  # the cars' charging power at each tick [W]
    not_ours: bool = False  # the home's own logic had the rooms for part of the step


class LiveHome:
    """One home over its devices, as a Plant (see the module notes).

    Parameters
    ----------
    model
        The house model (room order, heater ratings, battery).
    rooms
        The room bus (:class:`~pems.live.loxone.LoxoneMqtt`).
    inverter
        The inverter (:class:`~pems.live.growatt.GrowattModbus`) or None.
    clock
        :class:`~pems.live.clock.SimClock`, :class:`~pems.live.clock.WallClock` or
        :class:`~pems.live.clock.JumpClock`.
    forecast
        Calendar time → the forecast from it: the PV and load expected now (the battery's
        translation) and the outdoor temperature when the sensor fails.
    events
        The home's event log (commands written, inverter changes, values not used).
    settings
        Loop settings.
    outdoor_problem
        ``T_out`` → why it cannot be used, or None (:meth:`~pems.live.safety.Watchdog.outdoor`).
    chargers
        Each car's loadpoint (:class:`~pems.live.evcc.EvccLoadpoint`), in the house file's car order.
    """

    def __init__(self, model: HouseModel, rooms: RoomBus, inverter: Inverter | None, clock: Any,
                 forecast: ForecastFn, events: EventLog, settings: LoopSettings | None = None,
                 outdoor_problem: Callable[[float], str | None] | None = None,
                 chargers: Sequence[Any] = ()) -> None:
        if len(chargers) != len(model.cars):
            raise ValueError(f"{len(model.cars)} cars in the house, {len(chargers)} loadpoints given")
        self.model, self.bus, self.inverter, self.clock = model, rooms, inverter, clock
        self.chargers = tuple(chargers)
        self.forecast, self.events = forecast, events
        self.settings = s = settings or LoopSettings()
        self.outdoor_problem = outdoor_problem or (lambda t_out: None)
        self.rooms: tuple[str, ...] = tuple(model.rooms)
        self.rating = np.asarray(model.u_max[model.heat], dtype=float)
        lim = model.limits
        self.bat_limits = (BatteryLimits(lim.max_charge_w, lim.max_discharge_w, lim.soc_min, lim.soc_max)
                           if model.has_battery and inverter is not None else None)
        self.listeners: list[HomeListener] = []
        # what the home is believed to be doing
        self.mode: str = "home"  # "pems" once the loop has taken the rooms
        self.relays: dict[str, bool] = dict.fromkeys(self.rooms, False)
        self.battery: BatteryCommand | None = None
        self.residual_s: dict[str, float] = dict.fromkeys(self.rooms, 0.0)
        # device writes and the beliefs above, from the loop's and the guard's threads
        self._io = threading.RLock()
        self.guard = Guard(clock, None, self._end_pulses, heartbeat=self._beat, heartbeat_s=s.inner_s)
        self._on_s: np.ndarray = np.zeros(len(self.rooms))  # on-time of the current step [s]
        self._setpoint: np.ndarray | None = None  # set-points in force (the thermostat's), or None
        self._pulse_end: dict[str, float] = {}  # room → monotonic end of its partial pulse this step [s]
        self._thermostat = Thermostat(model.house.heating.thermostat_hysteresis_k)
        self._pending_home = False
        self._pending_release = False
        self._pending_cars = False  # the cars' hand-back to evcc, until it went out
        # the loop commanded the cars since their last hand-back; at the start not known (a loop before a
        # crash may have): a first step that leaves the cars to evcc hands them back once
        self.cars_held = bool(self.chargers)
        self._acc = _StepAccum()
        self._soc = math.nan
        self._bus_connections = -1
        self._online_said = False  # the bus was told the loop is online (after its first fresh commands)
        self._unsent: dict[tuple[str, str, str, str], int] = {}  # refused writes logged once: repeats since
        self._problems: dict[str, str] = {}  # measured values not used, by key: the kind of problem
        self._thinking = contextlib.ExitStack()  # the clock's real-time hold while the controller thinks
        self.first_mono: float | None = None  # monotonic time of the first step (None: the next boundary)
        self.stop_event = threading.Event()
        self.k = 0  # steps commanded
        self.overruns = 0
        self.last: Sample | None = None  # the reading behind the last observation
        self.last_cars: tuple[Any, ...] = ()  # the cars' readings behind it
        self.record: dict[str, Any] = {}  # the current step's record (the wrappers add to it)
        self._m0 = 0.0
        self._metered = False

    # ------------------------------------------------------------------ lifecycle
    def connect(self) -> None:
        """Connect both devices and start the guard's thread (idempotent)."""
        self.bus.connect()
        if self.inverter is not None:
            self.inverter.connect()
        for c in self.chargers:
            c.connect(wait_s=0)  # evcc's broker may be the rooms' (just connected) or one still coming
        self.guard.start()

    def restore(self, st: LoopState) -> None:
        """Take over what a saved loop believed of the home."""
        self.mode = st.mode if st.mode in ("pems", "home") else "home"
        self.relays = {r: bool(st.relays.get(r, False)) for r in self.rooms}
        self.residual_s = {r: float(st.duty_residual_s.get(r, 0.0)) for r in self.rooms}
        self.battery = st.battery_command()

    def state(self, saved_at: pd.Timestamp, t: pd.Timestamp, x: Any = None, d: Any = None) -> LoopState:
        """What the loop believes of the home (and the controller's estimate ``x``, ``d``), to save."""
        b = None
        if self.battery is not None:
            b = asdict(self.battery)
            b["until"] = b["until"].isoformat() if b["until"] is not None else None
        return LoopState(saved_at=saved_at.isoformat(), step_time=t.isoformat(), rooms=list(self.rooms),
                         estimator_x=None if x is None else [float(v) for v in x],
                         last_d=None if d is None else [float(v) for v in d], mode=self.mode,
                         relays=dict(self.relays), battery=b, duty_residual_s=dict(self.residual_s))

    def close(self) -> None:
        """Stop the guard and disconnect (the hand-back is the caller's, before: :meth:`give_back`)."""
        self._thinking.close()
        self.guard.cancel_offs()
        self.guard.stop()
        quietly(self.bus.close, "closing the room bus")
        if self.inverter is not None:
            quietly(self.inverter.close, "closing the inverter connection")
        for c in self.chargers:
            quietly(c.close, "closing an evcc loadpoint connection")

    # ------------------------------------------------------------------ the Plant protocol
    def first_step_mono(self) -> float:
        """Monotonic time of the first step: the next boundary of the calendar's step grid."""
        now, mono = self.clock.now(), self.clock.monotonic()
        t = now.ceil(pd.Timedelta(seconds=self.settings.step_s))
        return mono + (t - now).total_seconds()

    def reset(self) -> Observation:
        """Wait for the first step's start (:attr:`first_mono`, or the next boundary), then observe."""
        s = self.settings
        self.connect()
        self._m0 = self.first_step_mono() if self.first_mono is None else float(self.first_mono)
        self.k = 0
        if not self._sleep_until(self._m0 + s.settle_s):
            return self._observe(self._m0)
        self._await_first_data(self._m0 + s.settle_s + s.inner_s / 2)
        return self._observe(self._m0)

    def step(self, action: Action) -> Observation:
        """Realise ``action`` for one control step; the observation at the next step's start."""
        s = self.settings
        self._thinking.close()  # the controller is done: the clock runs at its own rate again
        m_k = self._m0 + self.k * s.step_s
        now = self.clock.now()
        t = now.floor(pd.Timedelta(seconds=s.step_s))
        record = self.record
        try:
            sent_mono = self._command(now, t, action, record)
        except Exception as exc:  # noqa: BLE001 - see _failed
            record.update(solver_ok=False, solver_reason=f"control step raised {type(exc).__name__}: {exc}",
                          commands="home (step error)")
            sent_mono = self._failed("control step", exc)
        self.guard.disarm()  # the step's work (armed by the watchdog when the controller got its turn)
        for lst in list(self.listeners):
            lst.on_commanded(t, record)
        self.k += 1
        # inner ticks timed from the moment the step's commands went out (see the module notes)
        j = 1
        end = m_k + s.step_s + s.settle_s
        while not self.stop_event.is_set():
            tick = sent_mono + j * s.inner_s
            if tick >= end - 1e-6 or not self._sleep_until(tick):
                break
            self.guard.arm(f"inner tick {j} of step {self.k - 1}", self.clock.monotonic() + s.deadline)
            try:
                self.tick()
            except Exception as exc:  # noqa: BLE001 - see _failed
                self._failed("inner tick", exc)
            self.guard.disarm()
            j += 1
        self._sleep_until(end)
        return self._observe(m_k + s.step_s)

    @property
    def stopped(self) -> bool:
        return self.stop_event.is_set()

    @property
    def unwrapped(self) -> LiveHome:
        """The home itself (what a wrapper's ``unwrapped`` also returns)."""
        return self

    # ------------------------------------------------------------------ reading
    def _sleep_until(self, mono: float) -> bool:
        return bool(self.clock.sleep_until(self.clock.start + pd.Timedelta(seconds=mono), self.stop_event))

    def read(self) -> Sample:
        """Read both devices (and keep the step's samples for the observation's means)."""
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
            off = inv.clock_offset_s
            # 90 s on a wall clock; an accelerated one also moves while the registers are read (and an
            # emulated inverter's clock ticks by the minute): allow a fifth of a wall second's worth
            speed = float((self.clock.speed if isinstance(self.clock, Accelerated) else None) or 1.0)
            if math.isfinite(off) and abs(off) >= 90.0 + 0.2 * max(speed - 1.0, 0.0):  # (see growatt)
                self.problem("inverter_clock", f"the inverter's clock is {off / 60:+.0f} min off the local time "
                             f"({self.model.house.site.timezone}): its slots are written in its own time; "
                             "set its clock (summer time?)", kind="off")
            elif math.isfinite(off):
                self._problems.pop("inverter_clock", None)
        self._acc.relay.append(dict(rr.relay))
        cars = tuple(c.read() for c in self.chargers)
        if cars:
            self._acc.ev.append(np.array([r.power_w if (r.plugged and math.isfinite(r.power_w)) else 0.0
                                          for r in cars]))
        return Sample(now, mono, rr, inv, cars)

    def _observe(self, m_start: float) -> Observation:
        """The observation at the step starting at monotonic ``m_start``; the controller's turn begins."""
        s = self.settings
        late = self.clock.monotonic() - (m_start + s.settle_s)
        if late > s.inner_s and not self.stopped:
            self.overruns += 1
            self.events.write("overrun", self.clock.now(), late_s=late, step=self.k)
        sample = self.read()
        t = sample.now.floor(pd.Timedelta(seconds=s.step_s))
        self.last_cars = sample.cars
        obs = self._observation(t, sample.rooms)
        self.last = sample
        self.record = {"step": self.k, "mono_s": sample.mono}
        self._metered = self.k > 0 and any(i.ok for i in self._acc.inv)
        self._acc = _StepAccum()
        self._thinking.enter_context(self._real_time())
        return obs

    def _real_time(self) -> contextlib.AbstractContextManager[Any]:
        """The clock held at real-time rate where it can be and should (``real_time_solve``)."""
        if self.settings.real_time_solve and isinstance(self.clock, Accelerated):
            return self.clock.real_time()
        return contextlib.nullcontext()

    def metered(self) -> bool:
        """The inverter was read over the step that just ended (its powers in the observation are measured)."""
        return self._metered

    def _await_first_data(self, until_mono: float) -> None:
        """Before the first step, wait (at most until ``until_mono``) for every room's first value:
        a loop just connected has seen only retained messages, if any."""
        # Delivery latency is wall time: at 1000× a 50 ms delay would be most of a minute of the
        # home's time, so an accelerated clock runs at real time meanwhile (as during a solve).
        speed = float((self.clock.speed if isinstance(self.clock, Accelerated) else None) or 1.0)
        wall_end = time.monotonic() + max(2.0, (until_mono - self.clock.monotonic()) / speed)
        with self._real_time():
            while time.monotonic() < wall_end and not self.stop_event.is_set():
                if all(math.isfinite(v) for v in self.bus.read().T_room.values()):
                    return
                time.sleep(0.002)

    def _observation(self, t: pd.Timestamp, rr: RoomReadings) -> Observation:
        acc, s = self._acc, self.settings
        rooms = self.rooms
        T = np.array([rr.T_room.get(r, math.nan) for r in rooms], dtype=float)
        if self.k == 0:
            p_heat = np.zeros(len(rooms))
        elif not acc.not_ours and self.mode == "pems" and not s.dry_run:
            # what the loop switched (known to the tick); a dry run switched nothing: measured below
            p_heat = self.rating * np.clip(self._on_s / s.step_s, 0.0, 1.0)
        else:
            rel = np.array([[row.get(r, math.nan) for r in rooms] for row in acc.relay] or [np.zeros(len(rooms))])
            p_heat = self.rating * np.nan_to_num(np.nanmean(np.where(np.isfinite(rel), rel, np.nan), axis=0)
                                                 if np.isfinite(rel).any() else np.zeros(len(rooms)))
        inv = acc.inv
        if inv and self.k > 0:
            p_pv = float(np.mean([i.P_pv for i in inv]))
            p_bat = float(np.mean([i.P_charge - i.P_discharge for i in inv]))
            p_grid = float(np.mean([i.P_import - i.P_export for i in inv]))
            p_house = float(np.mean([i.P_load for i in inv]))
        else:
            p_pv = p_bat = p_grid = 0.0
            p_house = float(np.sum(p_heat))
        t_out = rr.T_out
        why = self.outdoor_problem(t_out)
        if why is not None:  # never into the estimator: the forecast's value instead (below)
            self.problem("T_out", why)
            t_out = math.nan
        else:
            self._problems.pop("T_out", None)
        soc = None
        if self.model.has_battery:
            soc = self._soc if math.isfinite(self._soc) else None
        cars: dict[str, Any] = {}
        if self.chargers:
            p_ev = np.mean(acc.ev, axis=0) if acc.ev and self.k > 0 else np.zeros(len(self.chargers))
            if inv and self.k > 0:
                p_house -= float(p_ev.sum())  # the wallboxes are behind the inverter's meter
            cars = self._cars_seen(t, p_ev)
        obs = Observation(time=t, T_room=T, soc=soc, T_out=t_out, P_pv=p_pv,
                          P_load=max(0.0, p_house - float(np.sum(p_heat))), P_grid=p_grid, P_bat=p_bat,
                          P_heat=p_heat, **cars)
        if not math.isfinite(t_out):  # no outdoor sensor (or it failed): the forecast's value now
            try:
                t_out = float(self.forecast(t).column("T_out")[0])
            except Exception:  # noqa: BLE001 - the estimator then predicts with the forecast anyway
                t_out = 0.0
            obs = replace(obs, T_out=t_out)
        return obs

    def _cars_seen(self, t: pd.Timestamp, p_ev: np.ndarray) -> dict[str, Any]:
        """The cars in the observation: SOC as the car reports it through evcc, only while it is plugged
        in and evcc is online (evcc says 0 % when it has no vehicle; NaN: not known, the estimator
        predicts it), the plug as evcc reports it (not known: as the schedule has it)."""
        readings = self.last_cars
        soc = np.array([reported_soc(r) for r in readings], dtype=float)
        plugged = np.zeros(len(readings), dtype=bool)
        schedule = None
        for j, r in enumerate(readings):
            if r.plugged is not None:
                plugged[j] = r.plugged
                continue
            if schedule is None:
                try:
                    schedule = self.forecast(t)
                except Exception:  # noqa: BLE001 - not plugged, then: nothing is planned for it
                    schedule = False
            if schedule is not False:
                plugged[j] = schedule.column(f"ev_plugged__{self.model.cars[j]}")[0] > 0.5
        return {"ev_soc": soc, "ev_plugged": plugged, "P_ev": p_ev}

    def problem(self, key: str, why: str, kind: str | None = None) -> None:
        """A measured value not used, or not as it should be: an event and a warning when its kind
        (``kind``, or ``why`` up to an ``=``) changes, not at every step (a broken sensor must not
        flood the log)."""
        kind = kind or why.split(" = ")[0]
        if self._problems.get(key) == kind:
            return
        self._problems[key] = kind
        self.events.write("sensor", self.clock.now(), key=key, problem=why)
        log.warning("%s not used: %s", key, why)

    # ------------------------------------------------------------------ inner ticks
    def tick(self) -> None:
        """One inner tick: sample (the listeners check it), retry a hand-back, let the thermostat switch
        under set-points, command again an inverter changed under the loop's command."""
        sample = self.read()
        for lst in list(self.listeners):
            lst.on_tick(sample)
        now, inv = sample.now, sample.inverter
        if self._pending_home or self._pending_release or self._pending_cars:
            self.handback(now)
        if inv is not None and inv.changed and self.mode == "pems" and self.battery is not None \
                and self.battery.priority != "load_first":
            # changed under the loop's command (the Growatt app): the command again, at once
            with self._io_lock():
                recs = self.inverter.command(self.battery)  # type: ignore[union-attr]
            self._log_writes(now, recs)
        if self._setpoint is not None and self.mode == "pems":
            with self._io_lock():
                relays = self._thermostat_relays(sample.rooms)
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


    def _failed(self, where: str, exc: Exception) -> float:
        """An unforeseen error in a step (a defect, a failing disk, a library surprise) must neither
        leave the home under commands nobody follows up nor end the loop: the home gets its own
        logic back at once, the error is logged with its reason (and the listeners told), and the
        next step tries again. Returns the monotonic time [s] of the hand-back."""
        log.exception("%s failed; the home runs itself", where)
        now = self.clock.now()
        self.events.write("step_error", now, reason=f"{where} raised {type(exc).__name__}: {exc}")
        try:
            for lst in list(self.listeners):
                lst.on_error(where, exc)
        except Exception:  # noqa: BLE001 - the hand-back below must go out
            log.exception("a listener failed on an error")
        if self.mode == "pems" or self._pending_home:
            self.give_back(now)  # never raises; what is not sent is retried at the next tick
        return self.clock.monotonic()

    # ------------------------------------------------------------------ commanding
    def _command(self, now: pd.Timestamp, t: pd.Timestamp, action: Action, record: dict[str, Any]) -> float:
        if action.heat_w is None and action.heat_setpoint_c is None:
            # the home's own logic this step (the controller's fallback, the watchdog's)
            if self.mode == "pems" or self._pending_home or self._pending_release:
                self.give_back(now)
            record.setdefault("commands", "home")
            return self.clock.monotonic()
        with self._io_lock():
            if action.heat_w is None:
                return self._command_setpoints(now, t, action, record)
            return self._command_powers(now, t, action, record)

    def _command_powers(self, now: pd.Timestamp, t: pd.Timestamp, action: Action, record: dict[str, Any]) -> float:
        s = self.settings
        self._setpoint = None
        heat = bound_heat(action.heat_w, self.rating)  # type: ignore[arg-type]
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
        self._command_battery(now, t, action.bat_w, float(heat.sum()), record)
        self._command_cars(now, action.ev_w, record)
        return sent_mono

    def _command_setpoints(self, now: pd.Timestamp, t: pd.Timestamp, action: Action, record: dict[str, Any]) -> float:
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
        self._command_battery(now, t, action.bat_w, float(self.rating @ on), record)
        self._command_cars(now, action.ev_w, record)
        return sent_mono

    def _take_rooms(self) -> list[WriteRecord]:
        """Mode ``pems`` where needed; the loop holds the rooms after."""
        records: list[WriteRecord] = []
        # mode after the relays, so the rooms switch over to the loop with the right relay state;
        # sent when the loop did not hold the rooms, after a reconnection, or when a room reports
        # another mode (at most once per step: the mode rate limit)
        reported = self.bus.modes()
        conns = self.bus.connections
        if (self.mode != "pems" or conns != self._bus_connections
                or any(v not in (None, "pems") for v in reported.values())):
            records += self.bus.set_mode("pems")
            self._bus_connections = conns
        self.mode = "pems"
        # "online" only now, after fresh commands: a home that trusts the status must not resume a
        # dead loop's relay commands in the seconds before the new loop's first step
        if not self._online_said and self.bus.announce_online():
            self._online_said = True
        return records

    def _command_battery(self, now: pd.Timestamp, t: pd.Timestamp, bat_w: float | None, heat_w: float,
                         record: dict[str, Any]) -> None:
        """The battery power (None: the inverter's own load first) as an inverter mode."""
        if self.inverter is None or self.bat_limits is None:
            return
        s = self.settings
        bat = bound_battery(bat_w, self._soc, self.bat_limits)
        fc = self.forecast(t)
        pv = float(fc.column("P_pv")[0]) if "P_pv" in fc.d_names else 0.0
        load = float(fc.column("P_load")[0]) if "P_load" in fc.d_names else 0.0
        until = t + pd.Timedelta(seconds=s.step_s + s.inner_s)  # the next step renews it, or it lapses
        cmd = battery_command(bat, pv, load + heat_w, self.bat_limits, s, until)
        self._log_writes(now, self.inverter.command(cmd))
        self.battery = cmd
        record.update(bat_w=bat, bat_w_plan=bat_w, battery=asdict(cmd))

    def _command_cars(self, now: pd.Timestamp, ev_w: Any, record: dict[str, Any]) -> None:
        """Each car's charging power through its loadpoint; ``None``: evcc's own mode (once)."""
        if not self.chargers:
            return
        if ev_w is None:
            if self.cars_held or self._pending_cars:
                self._pending_cars = True
                self._handback_locked(now)
            record.update(ev_w=None)
            return
        ev = np.asarray(ev_w, dtype=float)
        records: list[WriteRecord] = []
        for c, p in zip(self.chargers, ev):
            records += c.command(float(p) if math.isfinite(p) else 0.0)
        self.cars_held = True
        self._pending_cars = False
        self._log_writes(now, records)
        record.update(ev_w=ev)

    # ------------------------------------------------------------------ the guard's thread
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

    def _end_pulses(self, rooms: list[str]) -> None:
        """The guard's thread: these rooms' relay pulses are over."""
        with self._io_lock():
            if self.mode != "pems":
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
        self.bus.heartbeat(self.clock.now())

    # ------------------------------------------------------------------ hand-back
    def give_back(self, now: pd.Timestamp) -> dict[str, str]:
        """The home's own logic for both devices, now: its rooms and (with one) the inverter go back,
        retried at every tick until sent; no relay pulse stays pending; the loop no longer holds the
        rooms. Never raises; returns :meth:`handback`'s report."""
        self._pending_home = True
        self._pending_release = self.inverter is not None
        self._pending_cars = bool(self.chargers)
        self._setpoint = None
        self._acc.not_ours = True
        self.guard.cancel_offs()
        report = self.handback(now)
        self.mode = "home"
        return report

    def handback(self, now: pd.Timestamp) -> dict[str, str]:
        """Send what of the hand-back is pending. Both devices are written before anything is logged,
        each whatever the other did. Returns, per device asked this time, ``"sent"``, ``"dry-run"``
        or ``"not sent: <why>"``."""
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
        if self._pending_cars:
            recs: list[WriteRecord] = []
            try:
                for c in self.chargers:
                    recs += c.release()
                sent["cars"] = recs
            except Exception as exc:  # noqa: BLE001
                errors["cars"] = f"{type(exc).__name__}: {exc}"
        report = {dev: f"not sent: {why}" for dev, why in errors.items()}
        for dev, recs in sent.items():
            done = all(w.sent or w.reason.startswith("unchanged") or "dry-run" in w.reason for w in recs)
            if done and dev == "rooms":
                self._pending_home = False
                self.mode = "home"
            elif done and dev == "cars":
                self._pending_cars = False
                self.cars_held = False
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

    # ------------------------------------------------------------------ the command log
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

    @property
    def unsent_repeats(self) -> int:
        return sum(self._unsent.values())
