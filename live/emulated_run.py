"""The emulator and the live loop together in one process: ``pems live --emulate``, the fault tests and
the fault matrix."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pems.controllers.base import Learner
from pems.live.clock import JumpClock, SimClock
from pems.live.home import LiveHome
from pems.live.loop import LiveLoop, LoopSettings
from pems.live.safety import SafetyLimits
from pems.twin.signals import Forecast

log = logging.getLogger(__name__)


class EmulatedRun:
    """A scenario's emulated home and a live loop controlling it over real sockets, in one process.

    Both run on one :class:`~pems.live.clock.SimClock` at ``speed``, anchored ``lead_s`` of wall
    time in the future so that the loop is connected before the first step. The controller and its
    forecasts are exactly those of :func:`pems.scenarios.runner.run` (``make_controller`` with the
    scenario's MPC options; the scenario's :class:`~pems.scenarios.forecast.ForecastProvider`), so
    the emulated truth compares with ``pems simulate --controller NAME``.

    Parameters
    ----------
    prep
        The prepared scenario.
    mqtt_host, mqtt_port
        The broker.
    speed
        Simulated seconds per wall second.
    hours
        Simulated hours (default: the scenario's length).
    controller
        Controller name.
    events_path, state_dir
        The loop's ``events.jsonl`` and state folder (None: in memory / none).
    dry_run
        The loop writes nothing.
    limits
        Watchdog thresholds (default: stale after 1.5 × the emulator's republish interval).
    jump_clock
        Give the loop a :class:`JumpClock` over the shared clock (clock-jump tests).
    mqtt_options, emulator_options
        Passed to both MQTT clients / to the :class:`~pems.live.emulator.Emulator`.
    mqtt_username, mqtt_password
        Broker credentials of both sides.
    influx
        The loop's :class:`~pems.live.influx_log.InfluxLog` (or None).
    deadline_s, real_time_solve
        As in :class:`LoopSettings` (a test of a hung solve turns the real-time hold off, so that a
        second of wall time is a thousand seconds of the home's).
    """

    def __init__(self, prep: Any, mqtt_host: str, mqtt_port: int, speed: float = 1000.0,
                 hours: float | None = None, controller: str = "mpc", events_path: str | Path | None = None,
                 state_dir: str | Path | None = None, dry_run: bool = False, limits: SafetyLimits | None = None,
                 jump_clock: bool = False, lead_s: float = 1.0, mqtt_options: dict[str, Any] | None = None,
                 emulator_options: dict[str, Any] | None = None, mqtt_username: str | None = None,
                 mqtt_password: str | None = None, influx: Any = None, deadline_s: float | None = None,
                 real_time_solve: bool = True) -> None:
        from pems.controllers import make_controller
        from pems.scenarios.forecast import forecast_provider

        sc, model = prep.scenario, prep.model
        self.prep, self.speed = prep, float(speed)
        self.step_s = sc.step.total_seconds()
        total_h = sc.n_steps * self.step_s / 3600.0
        self.hours = total_h if hours is None else float(hours)
        self.n_steps = int(round(self.hours * 3600.0 / self.step_s))
        self.controller_name = controller
        self.deadline_s, self.real_time_solve = deadline_s, bool(real_time_solve)
        self.controller = make_controller(controller, model, self.step_s, sc.spec.mpc.model_dump())
        if isinstance(self.controller, Learner) and self.controller.learns_from_history:  # as pems simulate does
            if prep.history is None:
                raise ValueError(f"controller {controller!r} learns from a history; the scenario has no [truth] section")
            self.controller.learn(prep.history)
        fcp = forecast_provider(sc, prep)
        n_max = len(prep.inputs.index) - 1

        def forecast(t: pd.Timestamp) -> Forecast:
            k = int(round((t - sc.start) / sc.step))
            return fcp(min(max(k, 0), n_max))

        self.mqtt_options = dict(mqtt_options or {})
        emu_opts = dict(emulator_options or {})
        self.lead_s = float(lead_s)
        self._forecast = forecast
        self._emu_opts = emu_opts
        self._host, self._port = mqtt_host, int(mqtt_port)
        self._creds = (mqtt_username, mqtt_password)
        self.events_path, self.state_dir, self.dry_run = events_path, state_dir, dry_run
        self.jump_clock = jump_clock
        self.influx = influx
        republish = emu_opts.get("republish_every_s", 900.0)
        self.limits = limits or SafetyLimits(republish_s=republish)
        self.clock = SimClock(sc.start, self.speed, epoch=time.time() + 3600.0)  # re-anchored in start()
        self.emu: Any = None
        self.loop: LiveLoop | None = None
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def new_loop(self, state_dir: str | Path | None = None, events_path: str | Path | None = None) -> LiveLoop:
        """A loop on this run's home (also used to restart one: same clock, new adapters)."""
        bus, inverter, loop_clock, settings = self.devices()
        return LiveLoop(self.prep.model, self.controller, self._forecast, bus, inverter, loop_clock, settings,
                        self.limits, events_path if events_path is not None else self.events_path,
                        state_dir if state_dir is not None else self.state_dir, self.influx,
                        currency=self.prep.scenario.spec.tariff.currency, chargers=self.chargers())

    def new_home(self, events_path: str | Path | None = None) -> LiveHome:
        """A bare :class:`~pems.live.home.LiveHome` on this run's emulated home (no safety or logging layer)."""
        from pems.live.event_log import EventLog

        bus, inverter, loop_clock, settings = self.devices()
        return LiveHome(self.prep.model, bus, inverter, loop_clock, self._forecast, EventLog(events_path), settings,
                        chargers=self.chargers())

    def chargers(self) -> list[Any]:
        """New evcc loadpoint clients on the emulated evcc, one per car (numbered from 1)."""
        from pems.live.evcc import EvccLoadpoint

        return [EvccLoadpoint(self._host, self._port, j + 1, car.charger, dry_run=self.dry_run,
                              clock=self.clock.monotonic, username=self._creds[0], password=self._creds[1],
                              **self.mqtt_options)
                for j, car in enumerate(self.prep.model.house.ev)]

    def devices(self) -> tuple[Any, Any, Any, LoopSettings]:
        """New adapters on the emulator's sockets: the room bus, the inverter (or None), the loop's clock
        and its settings."""
        from pems.live.growatt import GrowattModbus
        from pems.live.loxone import LoxoneMqtt

        model, clock, emu = self.prep.model, self.clock, self.emu
        bus = LoxoneMqtt(self._host, self._port, model.rooms, layout=emu.home.layout, clock=clock.monotonic,
                         dry_run=self.dry_run, username=self._creds[0], password=self._creds[1],
                         **self.mqtt_options)
        inverter = None
        if model.has_battery:
            speed = self.speed

            def sim_sleep(seconds: float) -> None:  # the guard's waits are in simulated seconds
                time.sleep(max(0.0, seconds) / speed)

            inverter = GrowattModbus("127.0.0.1", emu.modbus_port, map=emu.growatt.regmap,
                                     timezone=model.house.site.timezone, dry_run=self.dry_run, timeout=1.0,
                                     reconnect_backoff_s=30.0, clock=clock.monotonic, now=clock.now,
                                     sleep=sim_sleep)
        loop_clock = JumpClock(clock) if self.jump_clock else clock
        tick = float(self.prep.scenario.spec.plant_step_seconds)
        settings = LoopSettings(step_s=self.step_s, inner_s=max(tick, 60.0) if self.step_s % 60 == 0 else tick,
                                settle_s=min(5.0, tick / 4), dry_run=self.dry_run, deadline_s=self.deadline_s,
                                real_time_solve=self.real_time_solve)
        return bus, inverter, loop_clock, settings

    def warm_up(self) -> None:
        """One throw-away solve before the clock starts: the first solve builds and compiles the
        solver (seconds of wall time, hours of accelerated time), then the controller is reset."""
        from pems.twin.signals import Observation

        prep, m = self.prep, self.prep.model
        x0 = prep.x0
        soc = float(x0[m.i_soc]) if m.has_battery else None
        obs = Observation(time=prep.scenario.start, T_room=np.asarray(x0[m.air], dtype=float), soc=soc,
                          T_out=float(prep.inputs["T_out"].iloc[0]), P_heat=np.zeros(m.n_rooms))
        self.controller.reset()
        self.controller.act(obs, self._forecast(prep.scenario.start))
        self.controller.reset()

    def start_emulator(self) -> Any:
        """Start the emulated home alone, its clock ``lead_s`` ahead (returns the emulator)."""
        from pems.live.emulator import Emulator

        self.clock = SimClock(self.prep.scenario.start, self.speed, epoch=time.time() + self.lead_s)
        self.emu = Emulator(self.prep, self._host, self._port, modbus_port=0, speed=self.speed,
                            clock=self.clock, hours=self.hours, mqtt_options=self.mqtt_options,
                            mqtt_username=self._creds[0], mqtt_password=self._creds[1], **self._emu_opts)
        self.emu.start()
        return self.emu

    def start(self) -> EmulatedRun:
        """Start the emulator and the loop's thread (returns at once)."""
        self.warm_up()
        self.start_emulator()
        self.loop = self.new_loop()
        self.loop.start()
        self.run_loop(self.loop, self.n_steps, 0.0)
        return self

    def run_loop(self, loop: LiveLoop, n_steps: int, first_mono: float) -> None:
        """Run ``loop`` for ``n_steps`` from ``first_mono`` in a thread (:meth:`wait` joins it)."""
        self.loop = loop

        def body() -> None:
            try:
                loop.run(n_steps=n_steps, first_mono=first_mono)
            except BaseException as exc:  # noqa: BLE001 - reported through .error
                self.error = exc
                log.exception("live loop failed")

        self._thread = threading.Thread(target=body, name="pems-live-loop", daemon=True)
        self._thread.start()

    def step_mono(self, k: int) -> float:
        """Monotonic time of control step ``k`` [s]."""
        return k * self.step_s

    def wait(self, timeout: float | None = None) -> bool:
        """Join the loop's thread; True when it ended."""
        if self._thread is not None:
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return True

    def finish(self, handback: bool = True, timeout: float = 30.0) -> Any:
        """Wait for the emulation's end, close the loop, stop the emulator; the truth (RunResult)."""
        self.wait(timeout=None)
        if self.loop is not None and self.loop._started:
            self.loop.close(handback=handback)
        self.emu.wait(timeout)
        self.emu.stop()
        if self.error is not None:
            raise RuntimeError(f"the live loop failed: {self.error}") from self.error
        if self.emu.error is not None:
            raise RuntimeError(f"the emulation failed: {self.emu.error}") from self.emu.error
        return self.emu.result(controller=f"live-{self.controller_name}")
