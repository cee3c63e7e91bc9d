"""The emulator: the twin of a house and scenario behind the real protocols.

:class:`Emulator` runs the scenario's simulated home (:class:`~pems.twin.plant.SimulatedHome`, the
same physics as ``pems simulate``) in real or accelerated time and puts it behind the protocols of a
real Loxone + Growatt home, so that the live loop cannot tell it from one:

- **Loxone over MQTT** (:class:`~pems.live.loxone_home.LoxoneHomeMqtt`): room temperatures (quantised
  like a Miniserver's, 0.1 K), relay states, the heating mode in force and the outdoor temperature,
  on the layout's state topics; relay and mode commands received on its command topics.
- **Growatt over Modbus TCP** (:class:`~pems.live.modbus_server.GrowattServer` on 127.0.0.1): the
  input registers (PV, SOC, charge/discharge, import/export, load) and the holding registers the
  loop writes, which drive :class:`~pems.live.inverter_sim.InverterLogic` (Growatt's priorities
  and time slots).

Every plant step (the scenario's ``plant_step_seconds``, one minute by default), at simulated time
``t``:

1. read the commanded modes and relays and the holding registers (what arrived before ``t``);
2. rooms in ``"home"`` mode follow the home's own thermostat (set-point 0.5 K above the comfort
   band's lower bound, the house's hysteresis: exactly :class:`~pems.controllers.rule_based.
   RuleBasedController` in the plant); rooms in ``"pems"`` mode follow their last relay command (off
   if none); the inverter's logic picks the battery power from the PV available, the load seen at
   its grid meter and the SOC;
3. publish the state at ``t`` (temperatures, relays, mode, outdoor) and step the twin one plant
   step with ``Action(heat_w = relay × rating, bat_w = P_bat)``;
4. serve the step's powers and the SOC at ``t`` in the Growatt input registers.

Nothing is published ahead of its simulated time: the state after a step goes out at the next one.

With nobody commanding (every room ``"home"``, the inverter in load first) this is the rule-based
baseline of ``pems simulate`` step for step; the tests check the KPIs agree.

Faults for tests of the loop's safety layer (they change what the *bus* carries; the home's own
thermostats keep their wired sensors): :meth:`Emulator.stuck` (a sensor repeats one value),
:meth:`Emulator.nan` (a sensor reports "no value"), :meth:`Emulator.stop_publishing` (the
Miniserver goes silent), and the servers' own ``stop``/``restart`` (:attr:`Emulator.growatt`; the
broker is the test's). A real Miniserver configured as in ``live/maps/loxberry.toml`` falls back to
its own thermostats when the loop's status topic says it is offline, or when the loop's heartbeat
has been silent for five minutes; so does the emulator (``fallback_when_loop_offline``,
``heartbeat_timeout_s``).

At the end, :meth:`Emulator.result` gives the emulated home's truth as a trajectory table at the
scenario's control step (means of the per-step log), its KPIs, and the events: every command the
home received (MQTT and Modbus), every injected fault, and what the twin did to a command (clips).
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import paho.mqtt.client as mqtt

from pems.controllers.rule_based import SETPOINT_ABOVE_LOW_K
from pems.live.clock import TIME_TOPIC, Clock, SimClock
from pems.live.devices import HeatingMode
from pems.live.event_log import jsonable
from pems.live.evcc_home import EvccSim
from pems.live.inverter_sim import BatteryRatings, InverterLogic
from pems.live.mqtt import TLSConfig
from pems.live.loxone_home import LoxoneHomeMqtt
from pems.live.modbus_server import GrowattServer, ServerWrite
from pems.live.registers import RegisterMap
from pems.live.topics import Layout
from pems.scenarios.kpis import compute_kpis, ev_kpis
from pems.scenarios.runner import Prepared, RunResult, prepare, trajectory
from pems.twin.model import HouseModel
from pems.twin.plant import SimulatedHome
from pems.twin.signals import Action
from pems.twin.thermostat import Thermostat

log = logging.getLogger(__name__)

#: Battery voltage served where the map has a voltage or current register (a 16-cell LFP pack) [V].
NOMINAL_BATTERY_V = 51.2
#: Battery temperature served where the map has one (an indoor battery) [°C].
BATTERY_TEMPERATURE_C = 20.0
_MISSING = object()  # "never published" (None and nan are values)


class _EmulatedHome(LoxoneHomeMqtt):
    """The home's MQTT side plus raw publications (a sensor's ``nan``, the emulator's clock)."""

    _id_prefix = "pems-emulator"

    def publish_raw(self, topic: str, payload: str, retain: bool | None = None, qos: int | None = None,
                    wait_s: float | None = None) -> bool:
        """Publish one message as is (default: the layout's state QoS and retain flag).

        ``wait_s``: block up to that many seconds until the broker has it (its acknowledgement at
        QoS 1 or 2; handed to the socket at QoS 0); False if it has not by then.
        """
        client = self._client
        if client is None or not self.connected:
            return False
        lay = self.layout
        info = client.publish(topic, payload, qos=lay.state.qos if qos is None else qos,
                              retain=lay.state.retain if retain is None else retain)
        ok = info.rc == mqtt.MQTT_ERR_SUCCESS
        if ok and wait_s is not None:
            try:
                info.wait_for_publish(wait_s)
            except (ValueError, RuntimeError):  # the connection went in the meantime
                ok = False
            ok = ok and info.is_published()
        self.published += int(ok)
        return ok


def battery_ratings(model: HouseModel) -> BatteryRatings | None:
    """The inverter's view of the house's battery (None without one)."""
    b, lim = model.house.battery, model.limits
    if b is None:
        return None
    return BatteryRatings(capacity_wh=b.capacity_kwh * 1000.0, max_charge_w=lim.max_charge_w,
                          max_discharge_w=lim.max_discharge_w, soc_min=lim.soc_min, soc_max=lim.soc_max,
                          eta_charge=b.eta_charge, eta_discharge=b.eta_discharge,
                          inverter_ac_w=lim.inverter_ac_w or math.inf)


def _fine(frame: pd.DataFrame, n_rows: int, n_sub: int, tick_s: float) -> pd.DataFrame:
    """Control-step rows held over their fine steps: ``n_rows`` rows → ``n_rows × n_sub``.

    The plant holds disturbances at their step average within a control step, so repeating the
    rows changes nothing in the physics.
    """
    part = frame.iloc[:n_rows]
    out = part.loc[part.index.repeat(n_sub)].copy()
    out.index = pd.DatetimeIndex(part.index[0] + pd.to_timedelta(np.arange(len(out)) * tick_s, unit="s"),
                                 name=frame.index.name or "time")
    return out


def decode_write(regmap: RegisterMap, write: ServerWrite) -> dict[str, float]:
    """Register name → engineering value of one Modbus write (unknown addresses as ``holding_<addr>``)."""
    by_addr = {r.address: r for r in regmap.table("holding")}
    out: dict[str, float] = {}
    i = 0
    while i < len(write.values):
        reg = by_addr.get(write.address + i)
        if reg is None or i + reg.words > len(write.values):
            out[f"holding_{write.address + i}"] = float(write.values[i])
            i += 1
            continue
        out[reg.name] = reg.decode(list(write.values[i:i + reg.words]))
        i += reg.words
    return out


@dataclass(frozen=True)
class EmulatorStats:
    """How the run went, beside the physics."""

    steps: int  # plant steps emulated
    commands: int  # MQTT commands received
    register_writes: int  # Modbus write requests received
    published: int  # MQTT messages handed to the broker connection
    max_lag_s: float  # worst delay of a step behind the clock [s of simulated time]; 0 on a manual clock


class Emulator:
    """A scenario's twin served over MQTT (Loxone) and Modbus TCP (Growatt), in simulated time.

    Parameters
    ----------
    scenario
        Built-in scenario name, scenario TOML path, or a :class:`~pems.scenarios.runner.Prepared`.
    mqtt_host, mqtt_port
        The MQTT broker the emulated Loxone publishes to.
    modbus_port
        TCP port of the emulated Growatt on 127.0.0.1 (0: a free one; see :attr:`modbus_port`).
    speed
        Simulated seconds per wall second [–], for the default :class:`~pems.live.clock.SimClock`.
    layout
        MQTT topic layout (built-in name, TOML path or :class:`~pems.live.topics.Layout`).
    regmap
        Growatt register map (built-in name, TOML path or :class:`~pems.live.registers.RegisterMap`).
    clock
        The clock to run on (its ``start`` must be the scenario's); default
        ``SimClock(scenario start, speed)`` anchored when :meth:`start` is called. Share it with
        the loop when both run in one process (:attr:`clock`, read it after :meth:`start`).
    sensor_quantum_k
        Resolution of the published temperatures [K] (0: unquantised).
    publish_every_s
        Sensor cadence [s of simulated time]: temperatures are published at most this often, and
        only when their quantised value changed. Relay and mode changes go out at once.
    republish_every_s
        Every value is published again this often even if unchanged [s of simulated time] (a
        Miniserver set to send periodically; 0: never). Everything is also republished after a
        reconnection to the broker.
    hours
        Simulated hours to run (default: the whole scenario).
    device_id
        Modbus unit id of the emulated inverter.
    mqtt_username, mqtt_password, mqtt_tls
        Broker credentials and TLS, as for :class:`~pems.live.loxone_home.LoxoneHomeMqtt`.
    fallback_when_loop_offline
        Rooms in ``"pems"`` mode follow their own thermostats while the loop's status topic says
        offline (its last will), or while its heartbeat has been silent for more than
        ``heartbeat_timeout_s``, as the Miniserver of ``loxberry.toml`` is configured to.
    inverter_settings
        Holding registers the emulated inverter starts with (register name → engineering value): the
        owner's own settings, which a loop must give back when it hands the home back.
    heartbeat_timeout_s
        Simulated seconds without a heartbeat after which the home takes its rooms back (only once a
        first heartbeat came: a loop without one is judged by its status alone).
    inverter_clock_offset_s
        The emulated inverter's clock minus the true local time [s] (−3600: never switched to summer
        time): it serves that time in its clock registers and runs its slots on it.
    mqtt_options
        Passed to the MQTT endpoint (``keepalive_s``, ``reconnect_min_s``, ...).

    Attributes
    ----------
    home
        The emulated Miniserver on the broker (:class:`~pems.live.loxone_home.LoxoneHomeMqtt`).
    growatt
        The emulated inverter (:class:`~pems.live.modbus_server.GrowattServer`; ``stop()``/``start()``
        it to emulate a datalogger reboot: the emulation carries on, the registers survive).
    plant
        The twin at the plant step (its ``log`` holds every step).
    clock, times
        The clock, and the simulated times of the published states (``n_ticks + 1`` of them).

    Notes
    -----
    Lifecycle: :meth:`start` (returns at once) → the run → :meth:`stop` (or the context manager).
    When ``hours`` have been emulated the thread ends but the servers keep serving the last
    values until :meth:`stop`, so a loop can still read them. :attr:`time` is the simulated time of
    the last state published; at that time the next plant step has already been decided with the
    commands received before it (:meth:`wait_until` waits for a given time).

    The whole run's per-step log and inputs are kept in memory (a few KB per plant step for 17
    rooms: a week at one minute is some tens of MB, a year several GB — emulate in pieces).
    """

    def __init__(self, scenario: str | Path | Prepared, mqtt_host: str, mqtt_port: int, modbus_port: int = 0,
                 speed: float = 60.0, layout: str | Path | Layout = "loxberry",
                 regmap: str | Path | RegisterMap = "growatt-sph", clock: Clock | None = None,
                 sensor_quantum_k: float = 0.1, publish_every_s: float = 60.0, republish_every_s: float = 900.0,
                 hours: float | None = None, device_id: int = 1, mqtt_username: str | None = None,
                 mqtt_password: str | None = None, mqtt_tls: TLSConfig | None = None,
                 fallback_when_loop_offline: bool = True, mqtt_options: dict[str, Any] | None = None,
                 heartbeat_timeout_s: float = 300.0, inverter_settings: dict[str, float] | None = None,
                 inverter_clock_offset_s: float = 0.0, evcc_mode: str = "pv") -> None:
        if isinstance(scenario, Prepared):
            prep = scenario
        else:
            from pems.scenarios.spec import load_scenario

            prep = prepare(load_scenario(scenario))
        self.prep = prep
        sc, model = prep.scenario, prep.model
        self.model = model
        self.rooms: tuple[str, ...] = model.rooms
        self.tick_s = float(sc.spec.plant_step_seconds)
        self.n_sub = int(round(sc.step.total_seconds() / self.tick_s))
        max_ticks = sc.n_steps * self.n_sub
        if hours is None:
            n_ticks = max_ticks
        else:
            if not (math.isfinite(hours) and hours > 0):
                raise ValueError(f"hours must be positive, got {hours}")
            n_ticks = int(round(hours * 3600.0 / self.tick_s))
            if n_ticks > max_ticks or n_ticks < 1:
                raise ValueError(f"{hours:g} h is outside the scenario ({max_ticks * self.tick_s / 3600:g} h)")
        self.n_ticks = n_ticks
        if sensor_quantum_k < 0 or publish_every_s < 0 or republish_every_s < 0:
            raise ValueError("sensor_quantum_k, publish_every_s and republish_every_s must not be negative")
        self.sensor_quantum_k = float(sensor_quantum_k)
        self._pub_every = max(1, int(round(publish_every_s / self.tick_s)))
        self._republish_every = max(1, int(round(republish_every_s / self.tick_s))) if republish_every_s else 0
        self.fallback_when_loop_offline = bool(fallback_when_loop_offline)
        self.heartbeat_timeout_s = float(heartbeat_timeout_s)
        self._beats_seen, self._last_beat = 0, None
        self._inverter_mode: str | None = None

        # Our own clock is anchored again in start(): setting up takes seconds, hours at high speed.
        self._own_clock = clock is None
        self.clock = clock if clock is not None else SimClock(sc.start, speed)
        if self.clock.start != sc.start:
            raise ValueError(f"the clock starts at {self.clock.start}, the scenario at {sc.start}")

        # The twin at its fine step: the scenario's disturbances held over each control step, with
        # the unmodelled heat of the true home where the scenario has one.
        n_ctrl = -(-n_ticks // self.n_sub)
        truth = prep.plant_inputs if prep.plant_inputs is not None else prep.inputs
        self._fine_plant_inputs = _fine(truth, n_ctrl, self.n_sub, self.tick_s)
        self._fine_inputs = _fine(prep.inputs, n_ctrl, self.n_sub, self.tick_s)
        self._fine_low = _fine(prep.comfort_low, n_ctrl, self.n_sub, self.tick_s)
        self._fine_high = _fine(prep.comfort_high, n_ctrl, self.n_sub, self.tick_s)
        self.plant = SimulatedHome(model, self._fine_plant_inputs.iloc[:n_ticks], prep.x0,
                                   step_s=self.tick_s, substep_s=self.tick_s)
        self.times = pd.DatetimeIndex(sc.start + pd.to_timedelta(np.arange(n_ticks + 1) * self.tick_s, unit="s"))
        d = self._fine_plant_inputs
        self._pv_avail = d["P_pv"].to_numpy(dtype=float)
        self._load = d["P_load"].to_numpy(dtype=float)
        self._t_out = d["T_out"].to_numpy(dtype=float)
        self._setpoint = self._fine_low[list(self.rooms)].to_numpy(dtype=float) + SETPOINT_ABOVE_LOW_K
        self._thermostat = Thermostat(model.house.heating.thermostat_hysteresis_k)
        self._rating = model.u_max[model.heat].copy()
        # The inverter's load first zeroes the power at its grid meter, which sees its own standby too.
        self._standby_w = model.param("inv_standby_w") if "inv_standby_w" in model.sym.p.names else 0.0
        pv = model.house.pv
        kwp = np.array([a.kwp for a in pv], dtype=float)
        self._pv1_share = float(kwp[0] / kwp.sum()) if len(kwp) and kwp.sum() > 0 else 1.0

        self.home = _EmulatedHome(mqtt_host, mqtt_port, self.rooms, layout=layout, username=mqtt_username,
                                  password=mqtt_password, tls=mqtt_tls, **(mqtt_options or {}))
        self.growatt = GrowattServer(regmap, port=modbus_port, device_id=device_id, host="127.0.0.1")
        # the house's cars behind an evcc-like loadpoint each, numbered from 1 in the house file's order
        self.cars = tuple(model.house.ev)
        self.evcc = (EvccSim(mqtt_host, mqtt_port, {j + 1: car.charger for j, car in enumerate(self.cars)},
                             mode=evcc_mode, username=mqtt_username, password=mqtt_password, tls=mqtt_tls,
                             **(mqtt_options or {})) if self.cars else None)
        self._ev_surplus = 0.0  # what evcc's PV modes see at the grid meter: export plus the cars' draw [W]
        self._ev_last = np.zeros(len(self.cars))  # the cars' charging over the last plant step [W]
        self._n_evcc = 0
        self._i_plug = [model.sym.d.names.index(f"ev_plugged__{car.id}") for car in self.cars]
        if inverter_settings:  # what the owner set in the Growatt app before PEMS came
            self.growatt.set_holding(dict(inverter_settings))
        ratings = battery_ratings(model)
        self.logic = (InverterLogic(self.growatt.regmap, ratings, model.house.site.timezone,
                                    clock_offset_s=inverter_clock_offset_s) if ratings is not None else None)
        self.inverter_clock_offset_s = float(inverter_clock_offset_s)

        nr = len(self.rooms)
        self._relay_log = np.zeros((n_ticks, nr), dtype=bool)
        self._pems_log = np.zeros((n_ticks, nr), dtype=bool)
        self._sp_log = np.full((n_ticks, nr), np.nan)
        self._switch_log = np.zeros(n_ticks, dtype=np.int64)
        self._relay = np.zeros(nr, dtype=bool)
        self._eff_mode: dict[str, HeatingMode] = dict.fromkeys(self.rooms, "home")

        self._lock = threading.Lock()
        self._progress = threading.Condition(self._lock)
        self._events: list[dict[str, Any]] = []
        self._stuck: dict[str, float] = {}
        self._nan: set[str] = set()
        self._silent = False
        self._last_pub: dict[str, Any] = {}  # topic key → last value published
        self._served: dict[str, int] = {}  # input register → raw value last served
        self._seen_connections = 0
        self._n_cmd = self._n_writes = 0
        self._done = 0  # plant steps done
        self._time: pd.Timestamp | None = None  # simulated time of the last state published
        self._max_lag_s = 0.0
        self._lag_warned = False
        self._fallback = False
        self._stop_evt = threading.Event()
        self._finished = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._closed = False

    # ------------------------------------------------------------------ lifecycle
    @property
    def modbus_port(self) -> int:
        """The port the emulated Growatt serves on (127.0.0.1)."""
        return self.growatt.port

    @property
    def end(self) -> pd.Timestamp:
        """Simulated time at which the run ends."""
        return self.times[-1]

    def start(self) -> Emulator:
        """Serve Modbus, connect to the broker and start the emulation thread (returns at once).

        Raises
        ------
        pems.live.mqtt.MqttConnectError
            The broker does not answer or refuses the connection.
        RuntimeError
            The Modbus server could not start.
        """
        if self._thread is not None:
            return self
        self.growatt.start()
        try:
            self.home.connect()
            if self.evcc is not None:
                self.evcc.connect()
        except BaseException:
            self.home.close()
            self.growatt.stop()
            raise
        if self._own_clock:
            self.clock = SimClock(self.clock.start, self.clock.speed)
        # Announce the running clock before returning, and wait until the broker holds it: a loop
        # started right after this call must not find the retained anchor of an emulator that ran
        # before on the same broker (it would follow that clock, then see this one as a restart).
        if not self._publish_anchor(self.clock.start, wait_s=self.home.connect_timeout_s):
            log.warning("emulator: the broker did not acknowledge the clock's announcement within %g s",
                        self.home.connect_timeout_s)
        self._thread = threading.Thread(target=self._run, name="pems-emulator", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """End the emulation (if still running), announce it, close the broker connection and the
        Modbus server. Idempotent; :meth:`result` stays available."""
        self._stop_evt.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._closed:
            return
        self._closed = True
        try:
            self._publish_anchor(running=False)
        finally:
            self.home.close()
            if self.evcc is not None:
                self.evcc.close()
            self.growatt.stop()

    close = stop

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def finished(self) -> bool:
        """True once the run has ended (all hours emulated, stopped, or failed)."""
        return self._finished.is_set()

    @property
    def error(self) -> BaseException | None:
        """The exception that ended the emulation thread, if one did."""
        return self._error

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the run ends; False on timeout."""
        return self._finished.wait(timeout)

    @property
    def time(self) -> pd.Timestamp | None:
        """Simulated time of the last state published (None before the first)."""
        with self._lock:
            return self._time

    @property
    def steps_done(self) -> int:
        """Plant steps emulated so far."""
        with self._lock:
            return self._done

    def wait_until(self, t: pd.Timestamp, timeout: float = 10.0) -> bool:
        """Block until the emulator has published its state at simulated time ``t`` (or ended)."""
        t = pd.Timestamp(t)
        deadline = time.monotonic() + timeout
        with self._progress:
            while (self._time is None or self._time < t) and not self._finished.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._progress.wait(min(left, 0.1))
            return self._time is not None and self._time >= t

    # ------------------------------------------------------------------ faults
    def _check_room(self, room: str) -> None:
        if room not in self.rooms:
            raise KeyError(f"unknown room {room!r}; rooms: {', '.join(self.rooms)}")

    def _fault_event(self, fault: str, **what: Any) -> None:
        with self._lock:
            now = self._time if self._time is not None else self.clock.start
            self._events.append({"time": now, "device": "emulator", "kind": "fault", "fault": fault, **what})

    def stuck(self, room: str, value: float | None = None) -> None:
        """The room's sensor repeats ``value`` [°C] (default: the value it last published) until
        :meth:`clear_faults`; the home's own thermostat is unaffected."""
        self._check_room(room)
        with self._lock:
            if value is None:
                last = self._last_pub.get(f"T_room__{room}")
                value = last if last is not None and math.isfinite(last) else self._quantise(
                    float(self.plant.x[self.model.air][self.rooms.index(room)]))
            self._stuck[room] = float(value)
            self._nan.discard(room)
        self._fault_event("stuck", room=room, value=float(value))

    def nan(self, room: str) -> None:
        """The room's sensor reports "no value" (``nan`` / JSON ``null``) until :meth:`clear_faults`."""
        self._check_room(room)
        with self._lock:
            self._nan.add(room)
            self._stuck.pop(room, None)
        self._fault_event("nan", room=room)

    def stop_publishing(self) -> None:
        """The Miniserver goes silent: no state messages at all (the connection stays up)."""
        with self._lock:
            self._silent = True
        self._fault_event("stop_publishing")

    def resume_publishing(self) -> None:
        """Publish again (everything at once, as after a restart)."""
        with self._lock:
            self._silent = False
            self._last_pub.clear()
        self._fault_event("resume_publishing")

    def clear_faults(self, room: str | None = None) -> None:
        """Heal one room's sensor (or all, and resume publishing)."""
        with self._lock:
            if room is None:
                self._stuck.clear()
                self._nan.clear()
                self._silent = False
            else:
                self._check_room(room)
                self._stuck.pop(room, None)
                self._nan.discard(room)
        self._fault_event("clear", room=room)

    # ------------------------------------------------------------------ the emulation thread
    def _run(self) -> None:
        try:
            times = list(self.times)  # Timestamps once, not a pandas lookup per step
            for i, t in enumerate(times):
                if not self.clock.sleep_until(t, self._stop_evt):
                    break
                self._note_lag(t)
                self._tick(i, t)
        except BaseException as exc:  # noqa: BLE001 - reported through .error, the servers stay up
            self._error = exc
            log.exception("emulator: step failed at %s", self._time)
        finally:
            self._finished.set()
            with self._progress:
                self._progress.notify_all()

    def _note_lag(self, t: pd.Timestamp) -> None:
        if self.clock.speed is None:
            return  # a manual clock: being "behind" it is the test's choice
        lag = (self.clock.now() - t).total_seconds()
        self._max_lag_s = max(self._max_lag_s, lag)
        if lag > 10 * self.tick_s and not self._lag_warned:
            self._lag_warned = True
            log.warning("emulator: %.0f s (simulated) behind the clock at speed %g: the machine cannot keep up",
                        lag, self.clock.speed)

    def _tick(self, i: int, t: pd.Timestamp) -> None:
        """Publish the state at ``t`` and, before the end, apply one plant step from ``t``."""
        stepping = i < self.n_ticks
        self._collect_commands(t)
        m = self.model
        T = self.plant.x[m.air].copy()
        if stepping:
            relay, modes = self._decide_heating(i, T)
        else:
            relay, modes = self._relay, self._eff_mode
        self._publish_state(i, t, T, relay, modes)
        self._publish_cars(i)
        if not stepping:
            with self._progress:
                self._time = t
                self._progress.notify_all()
            return
        soc = float(self.plant.x[m.i_soc]) if m.has_battery else 0.0
        heat = relay * self._rating
        bat_w = None
        ev_w = self._ev_request() if self.evcc is not None else None
        if self.logic is not None:
            self._serve_clock(t)
            ev_seen = 0.0 if ev_w is None else float(self.plant.ev_charging(ev_w).sum())  # the meter sees it too
            house_w = self._load[i] + float(heat.sum()) + self._standby_w + ev_seen
            out = self.logic.step(self.growatt.holding(), t, P_pv=self._pv_avail[i], P_load=house_w,
                                  soc=soc, dt_s=self.tick_s)
            bat_w = out.P_bat
            if out.mode != self._inverter_mode:  # when the priority in force changes, and to what
                self._inverter_mode = out.mode
                with self._lock:
                    self._events.append({"time": t, "device": "inverter", "kind": "mode", "mode": out.mode})
        obs = self.plant.step(Action(heat_w=heat, bat_w=bat_w, ev_w=ev_w))
        if obs.P_ev is not None:
            self._ev_last = np.asarray(obs.P_ev, dtype=float)
            self._ev_surplus = max(-obs.P_grid, 0.0) + float(self._ev_last.sum())
        self._serve_measurements(obs, soc)
        with self._progress:
            self._done = i + 1
            self._time = t
            self._progress.notify_all()

    def _decide_heating(self, i: int, T: np.ndarray) -> tuple[np.ndarray, dict[str, HeatingMode]]:
        """Relay states for the step from ``t_i``: the home's thermostats or the loop's commands."""
        home = self.home
        commanded = home.modes
        relay_cmd = home.relay_commands
        if home.heartbeats != self._beats_seen:  # a beat since the last tick (the home's minute resolution)
            self._beats_seen, self._last_beat = home.heartbeats, self.times[i]
        silent = (self._last_beat is not None and
                  (self.times[i] - self._last_beat).total_seconds() > self.heartbeat_timeout_s)
        offline = self.fallback_when_loop_offline and (home.loop_online is False or silent)
        if offline != self._fallback:
            self._fallback = offline
            why = ("heartbeat silent" if silent else "loop offline") if offline else "loop online"
            with self._lock:
                self._events.append({"time": self.times[i], "device": "emulator", "kind": "fallback",
                                     "active": offline, "why": why})
        modes: dict[str, HeatingMode] = {r: ("home" if offline else commanded[r]) for r in self.rooms}
        pems = np.array([modes[r] == "pems" for r in self.rooms])
        sp = self._setpoint[i]
        thermo = self._thermostat.relays(T, self._relay, sp)  # the home's own, the plant's rule
        cmd = np.array([bool(relay_cmd[r]) for r in self.rooms])
        relay = np.where(pems, cmd, thermo)
        self._relay_log[i] = relay
        self._pems_log[i] = pems
        self._sp_log[i] = np.where(pems, np.nan, sp)
        self._switch_log[i] = int(np.count_nonzero(relay != self._relay))
        self._relay = relay
        self._eff_mode = modes
        return relay, modes

    def _ev_request(self) -> np.ndarray:
        """What each loadpoint's evcc charges with this plant step [W] (the plant then applies the plug
        and the car's fill)."""
        assert self.evcc is not None
        return np.array([self.evcc.power(j + 1, self._ev_surplus) for j in range(len(self.cars))])

    def _plugged(self, i: int) -> np.ndarray:
        """Each car's plugged share at tick ``i``."""
        return self.plant.D[min(i, len(self.plant.D) - 1), self._i_plug]

    def _publish_cars(self, i: int) -> None:
        """Each loadpoint's state at tick ``i``: plugged, the car's SOC, the last plant step's charging."""
        if self.evcc is None:
            return
        plugged = self._plugged(i) > 0.5
        soc = self.plant.x[self.model.i_ev_soc]
        for j in range(len(self.cars)):
            self.evcc.publish_state(j + 1, bool(plugged[j]), float(self._ev_last[j]) if plugged[j] else 0.0,
                                    float(soc[j]))

    def _collect_commands(self, t: pd.Timestamp) -> None:
        """Log the commands that arrived since the last step, stamped with the simulated time at
        which the home first acted on them (and their wall-clock arrival)."""
        new = self.home.commands(self._n_cmd)
        writes = self.growatt.writes[self._n_writes:]
        cars = self.evcc.commands(self._n_evcc) if self.evcc is not None else []
        if not new and not writes and not cars:
            return
        self._n_cmd += len(new)
        self._n_writes += len(writes)
        self._n_evcc += len(cars)
        events = [{"time": t, "wall_time": c.time, "device": "loxone", "kind": c.kind, "room": c.room,
                   "value": c.value, "topic": c.topic, "retained": c.retained} for c in new]
        events += [{"time": t, "wall_time": w.time, "device": "growatt", "kind": "register_write",
                    "function_code": w.function_code, "address": w.address,
                    "registers": decode_write(self.growatt.regmap, w)} for w in writes]
        events += [{"time": t, "wall_time": c.time, "device": "evcc", "kind": c.key, "loadpoint": c.loadpoint,
                    "value": c.value, "accepted": c.accepted} for c in cars]
        with self._lock:
            self._events.extend(events)

    def _quantise(self, v: float) -> float:
        q = self.sensor_quantum_k
        return round(round(v / q) * q, 6) if q > 0 else round(v, 6)

    def _publish_state(self, i: int, t: pd.Timestamp, T: np.ndarray, relay: np.ndarray,
                       modes: dict[str, HeatingMode]) -> None:
        home = self.home
        if not home.connected:
            return
        if home.connections != self._seen_connections:  # (re)connected: the broker may have lost everything
            self._seen_connections = home.connections
            self._last_pub.clear()
        full = (self._republish_every and i % self._republish_every == 0) or not self._last_pub
        sensors = i % self._pub_every == 0 or i == self.n_ticks or full
        with self._lock:
            silent, stuck, nan = self._silent, dict(self._stuck), set(self._nan)
        if full or i == self.n_ticks:
            self._publish_anchor(t)  # the anchor does not change: announce it now and then
        if silent:
            return
        last = self._last_pub

        def changed(key: str, v: Any) -> bool:
            old = last.get(key, _MISSING)
            same = old is not _MISSING and (old == v or (isinstance(v, float) and math.isnan(v)
                                                        and isinstance(old, float) and math.isnan(old)))
            if full or not same:
                last[key] = v
                return True
            return False

        temps: dict[str, float] = {}
        if sensors:
            for j, r in enumerate(self.rooms):
                v = math.nan if r in nan else stuck.get(r, self._quantise(float(T[j])))
                if changed(f"T_room__{r}", v):
                    if math.isnan(v):
                        home.publish_raw(home.layout.topic("temperature", r), home.layout.encode("temperature", v))
                    else:
                        temps[r] = v
        relays = {r: bool(relay[j]) for j, r in enumerate(self.rooms) if changed(f"relay__{r}", bool(relay[j]))}
        mode_out = {r: modes[r] for r in self.rooms if changed(f"mode__{r}", modes[r])}
        t_out = None
        if sensors:
            v = self._quantise(float(self._t_out[min(i, self.n_ticks - 1)]))
            t_out = v if changed("T_out", v) else None
        home.publish_state(T_room=temps, relay=relays, T_out=t_out, mode=mode_out)

    def _publish_anchor(self, t: pd.Timestamp | None = None, running: bool = True,
                        wait_s: float | None = None) -> bool:
        """Announce the clock (retained, QoS 1) as of simulated time ``t``; True if published (and,
        with ``wait_s``, acknowledged by the broker in that time)."""
        if not self.home.connected:
            return False
        now = t if t is not None else (self._time if self._time is not None else self.clock.start)
        return self.home.publish_raw(TIME_TOPIC, self.clock.anchor(now, running=running).to_json(),
                                     retain=True, qos=1, wait_s=wait_s)

    def _serve_clock(self, t: pd.Timestamp) -> None:
        """The inverter's clock registers (where its map has them): its local time, offset as set."""
        if "clock_year" not in self.growatt.regmap:
            return
        local = self.logic.local_time(t) if self.logic is not None else t
        self.growatt.set_holding(clock_year=local.year, clock_month=local.month, clock_day=local.day,
                                 clock_hour=local.hour, clock_minute=local.minute, clock_second=local.second)

    def _serve_measurements(self, obs: Any, soc: float) -> None:
        """The step's powers and the SOC at its start, as the inverter's input registers."""
        reg = self.growatt.regmap
        p_bat, p_grid, p_pv = obs.P_bat, obs.P_grid, obs.P_pv
        values = {"P_pv": p_pv, "soc": soc, "P_charge": max(p_bat, 0.0), "P_discharge": max(-p_bat, 0.0),
                  "P_import": max(p_grid, 0.0), "P_export": max(-p_grid, 0.0),
                  "P_load": obs.P_load + float(np.sum(obs.P_heat)) + (0.0 if obs.P_ev is None else float(np.sum(obs.P_ev)))}
        extra = {"P_pv1": p_pv * self._pv1_share, "P_pv2": p_pv * (1.0 - self._pv1_share),
                 "V_bat": NOMINAL_BATTERY_V, "I_bat": p_bat / NOMINAL_BATTERY_V, "T_bat": BATTERY_TEMPERATURE_C}
        values.update({k: v for k, v in extra.items() if k in reg and reg[k].table == "input"})
        # Only what the registers would show differently: each register update is a round trip to
        # the server's event loop, and most values (night PV, the idle direction of the battery,
        # SOC to 1 %) do not change from one step to the next.
        raw = {k: round(v / reg[k].scale) for k, v in values.items() if k in reg}
        changed = {k: values[k] for k, r in raw.items() if self._served.get(k) != r}
        if changed:
            self.growatt.set_measurements(changed)
            self._served.update({k: raw[k] for k in changed})

    # ------------------------------------------------------------------ results
    @property
    def stats(self) -> EmulatorStats:
        with self._lock:
            return EmulatorStats(steps=self._done, commands=self._n_cmd, register_writes=self._n_writes,
                                 published=self.home.published, max_lag_s=self._max_lag_s)

    def events(self) -> list[dict[str, Any]]:
        """Every command received, fault injected and clip applied so far, oldest first (simulated time)."""
        with self._lock:
            mine = list(self._events)
        twin = [{**e, "device": "twin"} for e in self.plant.log.events]
        return sorted(mine + twin, key=lambda e: e["time"])

    def relay_table(self) -> pd.DataFrame:
        """Every emulated tick so far: each room's relay (``relay__<room>``, 1 = heating) and whether the
        loop or the home's thermostat switched it (``pems__<room>``), indexed by the tick's start."""
        with self._lock:
            done = self._done
        idx = pd.DatetimeIndex(self.times[:done], name="time")
        cols = {}
        for j, r in enumerate(self.rooms):
            cols[f"relay__{r}"] = self._relay_log[:done, j].astype(float)
            cols[f"pems__{r}"] = self._pems_log[:done, j].astype(float)
        return pd.DataFrame(cols, index=idx)

    def result(self, controller: str = "emulator") -> RunResult:
        """The emulated home's truth so far: trajectory at the control step, KPIs and events.

        Only complete control steps are included. ``controller`` names who ran the home in
        ``kpis.json``.

        Raises
        ------
        RuntimeError
            Fewer than two control steps have been emulated (no KPIs without them).
        """
        with self._lock:
            done = self._done
        n_ctrl = done // self.n_sub
        if n_ctrl < 2:
            raise RuntimeError(f"only {done} plant steps emulated; the truth needs at least two control steps "
                               f"({2 * self.n_sub} plant steps)")
        sc, model = self.prep.scenario, self.model
        n = n_ctrl * self.n_sub
        fine_prep = replace(self.prep, inputs=self._fine_inputs, comfort_low=self._fine_low,
                            comfort_high=self._fine_high)
        # (the thread may step on while we read: rows before `done` are final, later ones are cut off)
        fine = trajectory(fine_prep, self.plant, np.zeros(self.n_ticks)).iloc[:n].copy()
        for j, r in enumerate(self.rooms):
            fine[f"T_setpoint__{r}"] = self._sp_log[:n, j]
            fine[f"mode_pems__{r}"] = self._pems_log[:n, j].astype(float)
        fine["relay_switches"] = self._switch_log[:n]
        group = np.arange(n) // self.n_sub
        traj = fine.groupby(group).mean()
        for c in ("curtailed_wh", "shed_wh", "relay_switches"):
            traj[c] = fine[c].groupby(group).sum().to_numpy()
        traj["soc_end"] = fine["soc_end"].groupby(group).last().to_numpy()
        for car in self.cars:  # a car's SOC at the step's start and end, not their means
            traj[f"ev_soc__{car.id}"] = fine[f"ev_soc__{car.id}"].groupby(group).first().to_numpy()
            traj[f"ev_soc_end__{car.id}"] = fine[f"ev_soc_end__{car.id}"].groupby(group).last().to_numpy()
        traj.index = pd.DatetimeIndex(self.prep.inputs.index[:n_ctrl], name="time")
        traj.attrs["timezone"] = model.house.site.timezone
        bat, lim = model.house.battery, model.limits
        usable = bat.capacity_kwh * (lim.soc_max - lim.soc_min) if bat else None
        kpis = compute_kpis(traj, self.rooms, usable) | ev_kpis(traj, self.cars)
        end = traj.index[-1] + sc.step
        events = [e for e in self.events() if e["time"] < end]
        return RunResult(sc.name, controller, traj, kpis, events, 0.0, self.rooms, sc.spec.tariff.currency)

    def write_outputs(self, out_dir: str | Path, controller: str = "emulator", report: bool = False) -> RunResult:
        """Write ``trajectory.parquet``, ``kpis.json`` and ``events.jsonl`` (and ``report.html`` if
        ``report``) into ``out_dir``; the same formats as ``pems simulate``."""
        result = self.result(controller)
        write_result(result, Path(out_dir), report=report)
        return result


def write_result(result: RunResult, out: Path, report: bool = False) -> None:
    """``trajectory.parquet``, ``kpis.json`` and ``events.jsonl`` of a run (the formats of
    :func:`pems.scenarios.outputs.write_run`, which also writes the slower HTML report)."""
    if report:
        from pems.scenarios.outputs import write_run

        write_run(result, out, subtitle=f"emulated home, {len(result.rooms)} rooms")
        return
    out.mkdir(parents=True, exist_ok=True)
    result.trajectory.to_parquet(out / "trajectory.parquet")
    kpis = {"scenario": result.scenario, "controller": result.controller, "currency": result.currency,
            **{k: jsonable(v) for k, v in result.kpis.items()}}
    (out / "kpis.json").write_text(json.dumps(kpis, indent=2) + "\n", encoding="utf-8")
    with open(out / "events.jsonl", "w", encoding="utf-8") as f:
        for e in result.events:
            f.write(json.dumps(jsonable(e)) + "\n")
