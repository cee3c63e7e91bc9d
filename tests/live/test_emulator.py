"""The emulator: the twin behind real MQTT and Modbus sockets, its clocks, and ``pems emulate``.

Broker tests (``service``) start mosquitto on 127.0.0.1; the emulated Growatt is a real pymodbus
server on 127.0.0.1. Most tests run the emulator on a :class:`ManualClock`, stepping simulated time
by hand (deterministic: a command sent before the clock moves is in force from the next plant
step); one runs it as fast as the CPU allows, and the command-line test on a real accelerated
:class:`SimClock`. Small two-room houses keep a simulated day at about two seconds.
"""

from __future__ import annotations

import dataclasses

import json
import math
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from helpers import BATTERY_HOUSE, FAST, TWO_ROOMS, shared_check, write_constant_inputs, write_scenario
from pems.cli import main
from pems.live.clock import TIME_TOPIC, ClockAnchor, ManualClock, SimClock
from pems.live.devices import BatteryCommand
from pems.live.emulator import Emulator
from pems.live.growatt import GrowattModbus
from pems.live.loxone import LoxoneMqtt
from pems.scenarios.runner import prepare, run
from pems.scenarios.spec import load_scenario
from services import free_port



def wait_until(predicate, timeout: float = 5.0, step: float = 0.02) -> bool:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if predicate():
            return True
        time.sleep(step)
    return bool(predicate())


# ---------------------------------------------------------------------------------------------
# scenarios (prepared once per module: the emulator never changes a Prepared)
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def battery_scenario(tmp_path_factory) -> Path:
    """Two rooms, 5 kWp PV, a 5 kWh battery, real January weather (pvlib's Greensboro TMY3), the
    BDEW H25 load and a two-rate tariff: one day."""
    folder = tmp_path_factory.mktemp("battery")
    return write_scenario(folder, BATTERY_HOUSE, weather="greensboro-tmy3", load="h25", prices="two-rate")


@pytest.fixture(scope="module")
def battery_prep(battery_scenario):
    return prepare(load_scenario(battery_scenario))


@pytest.fixture(scope="module")
def plain_prep(tmp_path_factory):
    """Two rooms without PV or battery, a constant −5 °C outside: one day."""
    folder = tmp_path_factory.mktemp("plain")
    write_constant_inputs(folder, "2024-01-10T00:00:00Z", 1, T_out=-5.0, ghi=0.0, P_load=400.0)
    return prepare(load_scenario(write_scenario(folder, TWO_ROOMS)))


def emulator(prep, broker, clock, **kw) -> Emulator:
    return Emulator(prep, broker.host, broker.port, clock=clock, mqtt_options=FAST, **kw)


def hour(prep, h: float) -> pd.Timestamp:
    return prep.scenario.start + pd.Timedelta(hours=h)


# ---------------------------------------------------------------------------------------------
# clocks (no broker)
# ---------------------------------------------------------------------------------------------
def test_sim_clock_runs_speed_times_wall_time_and_two_clocks_with_one_epoch_agree():
    start = pd.Timestamp("2024-01-10T00:00:00Z")
    a = SimClock(start, speed=3600.0)
    b = SimClock("2024-01-10T00:00:00", speed=3600.0, epoch=a.epoch)  # another process, same anchor
    assert b.start == start
    t0 = time.monotonic()
    time.sleep(0.05)
    elapsed = (a.now() - start).total_seconds()
    assert 0.05 * 3600 <= elapsed <= (time.monotonic() - t0 + 0.01) * 3600
    t1, t2, t3 = a.now(), b.now(), a.now()  # b reads between two reads of a (preemption-proof)
    slack = pd.Timedelta(seconds=0.001 * 3600)  # a millisecond of wall time
    assert t1 - slack <= t2 <= t3 + slack
    assert a.sim_at(a.epoch + 2.0) == start + pd.Timedelta(hours=2)
    assert a.wall_at(start + pd.Timedelta(hours=1)) == pytest.approx(a.epoch + 1.0)
    # an epoch in the past: the clock is already ahead
    late = SimClock(start, speed=60.0, epoch=time.time() - 60.0)
    assert late.now() - start >= pd.Timedelta(hours=1)
    with pytest.raises(ValueError):
        SimClock(start, speed=0.0)


def test_sim_clock_sleeps_until_a_simulated_time_and_can_be_interrupted():
    clock = SimClock("2024-01-10T00:00:00Z", speed=6000.0)
    target = clock.start + pd.Timedelta(minutes=10)  # 0.1 s of wall time
    t0 = time.monotonic()
    assert clock.sleep_until(target)
    assert 0.09 <= time.monotonic() - t0 < 1.0
    assert clock.now() >= target
    stop = threading.Event()
    threading.Timer(0.1, stop.set).start()
    t0 = time.monotonic()
    assert not clock.sleep_until(clock.start + pd.Timedelta(days=30), stop)
    assert time.monotonic() - t0 < 1.0


def test_sim_clock_real_time_runs_at_speed_one_inside_and_keeps_the_epoch_right():
    clock = SimClock("2024-01-10T00:00:00Z", speed=1000.0)
    with clock.real_time():
        m0, w0 = clock.monotonic(), time.monotonic()
        with clock.real_time():  # reentrant
            time.sleep(0.2)
        inside = clock.monotonic() - m0
        wall_inside = time.monotonic() - w0
    assert 0.2 <= inside <= wall_inside + 1e-3  # ~0.2 simulated seconds, not ~200
    m1, w1 = clock.monotonic(), time.monotonic()
    time.sleep(0.05)
    rate = (clock.monotonic() - m1) / (time.monotonic() - w1)
    assert rate == pytest.approx(1000.0, rel=0.1)  # accelerated again
    follower = SimClock(clock.start, speed=1000.0, epoch=clock.epoch)  # an anchor published after the hold
    assert abs((follower.now() - clock.now()).total_seconds()) < 1.0  # a millisecond of wall time
    # a sleeper across a hold wakes at its simulated target, not before
    target = clock.now() + pd.Timedelta(seconds=100)  # 0.1 s of wall time at speed
    done: list = []
    th = threading.Thread(target=lambda: done.append((clock.sleep_until(target) and clock.now(), time.monotonic())))
    th.start()
    with clock.real_time():
        time.sleep(0.15)
    released = time.monotonic()
    th.join(2.0)
    assert done and done[0][0] >= target
    assert done[0][1] - released < 0.15  # ≤ 0.1 s of the target left after the hold: no oversleeping


def test_manual_clock_moves_only_when_told_and_wakes_sleepers():
    clock = ManualClock("2024-01-10T00:00:00Z")
    woke: list[pd.Timestamp] = []
    th = threading.Thread(target=lambda: woke.append(clock.sleep_until(clock.start + pd.Timedelta(minutes=5))
                                                     and clock.now()))
    th.start()
    time.sleep(0.1)
    assert not woke and clock.monotonic() == 0.0
    clock.advance(minutes=4)
    time.sleep(0.1)
    assert not woke
    clock.advance(seconds=90)
    th.join(2)
    assert woke == [clock.start + pd.Timedelta(minutes=5, seconds=30)]
    with pytest.raises(ValueError):
        clock.set(clock.start)  # never backwards
    stop = threading.Event()
    stop.set()
    assert not clock.sleep_until(clock.start + pd.Timedelta(days=1), stop)
    auto = ManualClock("2024-01-10T00:00:00Z", auto=True)
    assert auto.sleep_until(auto.start + pd.Timedelta(hours=3)) and auto.monotonic() == 3 * 3600


def test_clock_anchor_round_trips_and_rebuilds_the_clock():
    clock = SimClock("2024-01-10T00:00:00Z", speed=120.0)
    anchor = ClockAnchor.from_json(clock.anchor().to_json())
    assert (anchor.start, anchor.speed, anchor.epoch, anchor.running) == (clock.start, 120.0, clock.epoch, True)
    follower = anchor.clock()
    t1, t2, t3 = clock.now(), follower.now(), clock.now()
    assert t1 - pd.Timedelta(seconds=0.12) <= t2 <= t3 + pd.Timedelta(seconds=0.12)  # within 1 ms of wall time
    manual = ClockAnchor.from_json(ManualClock(clock.start).anchor(running=False).to_json())
    assert manual.speed is None and not manual.running
    with pytest.raises(ValueError, match="manual clock"):
        manual.clock()
    with pytest.raises(ValueError):
        ClockAnchor.from_json(b"21.5")


# ---------------------------------------------------------------------------------------------
# (a) physics: with nobody commanding, the emulated home is the rule-based baseline
# ---------------------------------------------------------------------------------------------
@pytest.mark.service
@pytest.mark.parametrize("which", ["battery", "plain"])
def test_uncommanded_emulator_reproduces_the_rule_based_run(which, battery_prep, plain_prep, broker):
    prep = battery_prep if which == "battery" else plain_prep
    ref = run(prep, "rule-based")
    clock = ManualClock(prep.scenario.start, auto=True)  # as fast as the CPU allows
    emu = emulator(prep, broker, clock)
    t0 = time.perf_counter()
    with emu:
        assert emu.wait(60), "a simulated day did not finish in 60 s"
        wall = time.perf_counter() - t0
        assert emu.error is None
        result = emu.result()
    assert emu.stats.steps == 24 * 60 and wall < 30
    skip = {"compute_s_per_step", "compute_s_per_step_max", "compute_s_mean"}  # the emulator runs no controller
    for key, value in ref.kpis.items():
        if key in skip:
            continue
        if isinstance(value, float) and math.isnan(value):
            assert math.isnan(result.kpis[key]), key
        else:
            assert result.kpis[key] == pytest.approx(value, rel=1e-9, abs=1e-9), key
    tr, rt = result.trajectory, ref.trajectory
    assert tr.index.equals(rt.index)
    for col in ("T_room__a", "T_room__b", "P_heat__a", "P_heat__b", "P_grid", "P_bat", "soc", "P_pv"):
        np.testing.assert_allclose(tr[col].to_numpy(), rt[col].to_numpy(), rtol=0, atol=1e-6, err_msg=col)
    np.testing.assert_allclose(tr["T_setpoint__a"], rt["T_setpoint__a"], atol=1e-12)
    assert (tr[["mode_pems__a", "mode_pems__b"]] == 0).all().all()
    assert ref.kpis["heating_kWh"] > 5  # the thermostats did work
    if which == "battery":
        assert ref.kpis["battery_cycles"] > 0.3 and ref.kpis["pv_kWh"] > 5
    assert not [e for e in result.events if e["device"] in ("loxone", "growatt")]  # nobody commanded


# ---------------------------------------------------------------------------------------------
# (b) the loop's MQTT client sees the home and can switch a room
# ---------------------------------------------------------------------------------------------
@pytest.mark.service
def test_loop_sees_temperatures_and_a_relay_command_heats_the_room(battery_prep, broker):
    prep = battery_prep
    clock = ManualClock(prep.scenario.start)
    emu = emulator(prep, broker, clock, hours=3)
    rooms = list(emu.rooms)
    with emu:
        assert emu.wait_until(clock.start)
        loop = LoxoneMqtt(broker.host, broker.port, rooms, clock=clock.monotonic, **FAST)  # ages in simulated s
        loop.connect()
        try:
            assert wait_until(lambda: all(math.isfinite(v) for v in loop.read().T_room.values())
                              and math.isfinite(loop.read().T_out))
            r = loop.read()
            x0 = prep.x0[prep.model.air]
            for j, room in enumerate(rooms):
                assert abs(r.T_room[room] - x0[j]) <= 0.05 + 1e-9  # 0.1 K steps, like a Miniserver
                assert r.T_room[room] * 10 == pytest.approx(round(r.T_room[room] * 10), abs=1e-9)
            assert r.relay == {"a": 0.0, "b": 0.0} and loop.modes() == {"a": "home", "b": "home"}
            assert loop.gateway_online is True
            assert loop.announce_online()  # a loop says so once it commands (the home obeys only then)
            assert wait_until(lambda: emu.home.loop_online is True)

            # room a to the loop, relay on for an hour, then off for an hour
            loop.set_mode("pems", ["a"])
            loop.set_relays({"a": True})
            assert emu.home.wait_for_commands(2, 5)
            clock.set(hour(prep, 1))
            assert emu.wait_until(hour(prep, 1))
            assert wait_until(lambda: loop.read().relay["a"] == 1.0 and loop.modes()["a"] == "pems")
            loop.set_relays({"a": False})
            assert emu.home.wait_for_commands(3, 5)
            clock.set(hour(prep, 2))
            assert emu.wait_until(hour(prep, 2))
            assert wait_until(lambda: loop.read().relay["a"] == 0.0)

            # room b to the loop with its relay on; then the loop dies: the home falls back
            loop.set_mode("pems", ["b"])
            loop.set_relays({"b": True})
            assert emu.home.wait_for_commands(5, 5)
        finally:
            loop.close()  # says "offline" on the loop's status topic
        assert wait_until(lambda: emu.home.loop_online is False)
        clock.set(emu.end)
        assert emu.wait(10) and emu.error is None
        res = emu.result()
    tr = res.trajectory
    q = pd.Timedelta(minutes=15)
    # the command arrived after the step at 00:00 was decided: on from 00:01 to 01:01 (60 steps)
    heat_a = tr["P_heat__a"].to_numpy() * 0.25  # [Wh] per row
    assert heat_a[:8].sum() == pytest.approx(2000.0 * 60 / 60, abs=1e-6)  # energy = on-time × rating
    assert (tr.loc[hour(prep, 0.25):hour(prep, 1) - q, "P_heat__a"] == 2000.0).all()
    assert (tr.loc[hour(prep, 1.25):hour(prep, 2) - q, "P_heat__a"] == 0.0).all()
    assert (tr.loc[hour(prep, 0.25):hour(prep, 2) - q, "mode_pems__a"] == 1.0).all()
    # it heats (through its floor slab: the air follows slowly): warmer than the same room unheated
    # (not than the thermostats' run, which may heat in the same cold hour)
    ref = run(dataclasses.replace(prep, model=prep.model.without_heating()), "rule-based").trajectory
    assert tr.loc[hour(prep, 1) - q, "T_room__a"] > ref.loc[hour(prep, 1) - q, "T_room__a"] + 0.2
    # after the loop died (before 02:01) no room is in the loop's hands any more
    assert (tr.loc[hour(prep, 2.25):, ["mode_pems__a", "mode_pems__b"]] == 0.0).all().all()
    events = res.events
    cmds = [e for e in events if e["device"] == "loxone"]
    assert [(e["kind"], e["room"], e["value"]) for e in cmds] == [
        ("mode", "a", "pems"), ("relay", "a", True), ("relay", "a", False), ("mode", "b", "pems"),
        ("relay", "b", True)]
    assert [e["time"] for e in cmds[:3]] == [hour(prep, 0) + pd.Timedelta(minutes=1)] * 2 + \
        [hour(prep, 1) + pd.Timedelta(minutes=1)]
    fallback = [e for e in events if e["kind"] == "fallback"]
    assert fallback and fallback[0]["active"] is True and fallback[0]["time"] > hour(prep, 2)


@pytest.mark.service
def test_sensor_faults_and_a_silent_miniserver_reach_the_loop(plain_prep, broker):
    prep = plain_prep
    clock = ManualClock(prep.scenario.start)
    emu = emulator(prep, broker, clock, hours=1, republish_every_s=60)  # every value every minute
    with emu:
        assert emu.wait_until(clock.start)
        loop = LoxoneMqtt(broker.host, broker.port, emu.rooms, clock=clock.monotonic, **FAST)
        loop.connect()
        try:
            assert wait_until(lambda: math.isfinite(loop.read().T_room["a"]))
            true_a = loop.read().T_room["a"]

            def step(minutes: float = 1) -> None:
                t = clock.advance(minutes=minutes)
                assert emu.wait_until(t)

            emu.stuck("a", 30.0)
            emu.nan("b")
            step()
            assert wait_until(lambda: loop.read().T_room["a"] == 30.0 and math.isnan(loop.read().T_room["b"]))
            assert loop.problems.total == 0  # "nan" is a deliberate no-value, not garbage
            emu.clear_faults()
            step()
            assert wait_until(lambda: abs(loop.read().T_room["a"] - true_a) < 1.0
                              and math.isfinite(loop.read().T_room["b"]))
            assert wait_until(lambda: loop.read().age_s["T_room__a"] < 60)
            emu.stop_publishing()
            step(10)
            time.sleep(0.2)  # nothing in flight arrives late
            assert loop.read().age_s["T_room__a"] >= 600  # ten simulated minutes of silence
            emu.resume_publishing()
            step()
            assert wait_until(lambda: loop.read().age_s["T_room__a"] < 60)
        finally:
            loop.close()
        clock.set(emu.end)
        assert emu.wait(10)
        faults = [e["fault"] for e in emu.events() if e["kind"] == "fault"]
    assert faults == ["stuck", "nan", "clear", "stop_publishing", "resume_publishing"]
    with pytest.raises(KeyError):
        emu.nan("attic")


# ---------------------------------------------------------------------------------------------
# (c) the loop's Modbus client reads the inverter and commands the battery
# ---------------------------------------------------------------------------------------------
@pytest.mark.service
def test_growatt_client_reads_the_home_and_battery_first_charges_from_the_grid(battery_prep, broker):
    prep = battery_prep
    tz = prep.model.house.site.timezone
    clock = ManualClock(prep.scenario.start)
    emu = emulator(prep, broker, clock, hours=4)
    with emu:
        assert emu.wait_until(clock.start)
        g = GrowattModbus("127.0.0.1", emu.modbus_port, map=emu.growatt.regmap, timezone=tz, timeout=2.0,
                          reconnect_backoff_s=0.0, now=clock.now)
        g.connect()
        try:
            r = g.read()
            lg, m = emu.plant.log, prep.model
            assert r.ok and r.priority == "load_first"
            assert r.soc == pytest.approx(prep.x0[m.i_soc], abs=0.005)  # the register holds whole %
            heat0 = float(lg.u_mean[0, m.heat].sum())
            assert r.P_load == pytest.approx(prep.inputs["P_load"].iloc[0] + heat0, abs=0.1)
            assert r.P_pv == pytest.approx(lg.pv[0], abs=0.1) and r.P_pv >= 0
            p_bat0 = float(lg.u_mean[0, -2] - lg.u_mean[0, -1])
            assert r.P_charge - r.P_discharge == pytest.approx(p_bat0, abs=0.2)
            assert r.P_import - r.P_export == pytest.approx(lg.grid[0], abs=0.2)

            clock.set(hour(prep, 2))
            assert emu.wait_until(hour(prep, 2))
            recs = g.command(BatteryCommand("battery_first", power_pct=50.0, soc_limit=0.9, ac_charge=True,
                                            until=hour(prep, 3)))
            assert any(w.sent for w in recs) and not [w for w in recs if not w.sent and not w.reason.startswith("unchanged")], recs
            clock.set(hour(prep, 2.5))
            assert emu.wait_until(hour(prep, 2.5))
            r = g.read()
            assert r.priority == "battery_first" and r.P_charge == pytest.approx(1250.0, abs=0.1)
            assert r.P_import >= 1250.0

            # the datalogger reboots: reads fail, then work again on the same port
            emu.growatt.stop()
            assert not g.read().ok
            emu.growatt.start()
            assert wait_until(lambda: g.read().ok)
        finally:
            g.close()
        clock.set(emu.end)
        assert emu.wait(10) and emu.error is None
        res = emu.result()
    tr = res.trajectory
    q = pd.Timedelta(minutes=15)
    during = tr.loc[hour(prep, 2) + q:hour(prep, 3) - q]
    assert len(during) == 3
    np.testing.assert_allclose(during["P_bat"], 1250.0, atol=1e-6)  # 50 % of 2500 W
    assert (during["P_pv"] < 1.0).all() and (during["P_grid"] > 1250.0).all()  # at night: from the grid
    # the stored energy rose by the AC energy × the charge efficiency
    soc = tr["soc_end"]
    gained = (soc.loc[hour(prep, 3) - q] - soc.loc[hour(prep, 2)]) * 5000.0
    assert gained == pytest.approx(1250.0 * 0.95 * 0.75, rel=1e-6)
    assert (tr.loc[hour(prep, 3):, "P_bat"] <= 1e-9).all()  # the slot ended: load first, at night no surplus
    writes = [e for e in res.events if e["device"] == "growatt"]
    assert writes and all(e["time"] == hour(prep, 2) + pd.Timedelta(minutes=1) for e in writes)
    written = {k: v for e in writes for k, v in e["registers"].items()}
    assert written["priority"] == 1 and written["bat_first_rate"] == 50 and written["ac_charge"] == 1


# ---------------------------------------------------------------------------------------------
# the clock on the bus
# ---------------------------------------------------------------------------------------------
@pytest.mark.service
def test_emulator_announces_its_clock_for_a_loop_in_another_process(plain_prep, broker):
    got: list[bytes] = []
    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="clock-follower")
    sub.on_connect = lambda c, u, f, rc, p: c.subscribe(TIME_TOPIC, qos=1)
    sub.on_message = lambda c, u, msg: got.append(bytes(msg.payload))
    emu = emulator(plain_prep, broker, SimClock(plain_prep.scenario.start, speed=600.0), hours=1)
    with emu:
        assert emu.wait_until(plain_prep.scenario.start)
        sub.connect(broker.host, broker.port)
        sub.loop_start()
        try:
            assert wait_until(lambda: got)  # retained: a late joiner gets it at once
            anchor = ClockAnchor.from_json(got[-1])
            follower = anchor.clock()
            assert anchor.running and anchor.speed == 600.0
            t1, t2, t3 = emu.clock.now(), follower.now(), emu.clock.now()
            assert t1 - pd.Timedelta(seconds=0.6) <= t2 <= t3 + pd.Timedelta(seconds=0.6)  # 1 ms of wall time
            assert anchor.time <= t3  # what the emulator had published by then
            emu.stop()
            assert wait_until(lambda: not ClockAnchor.from_json(got[-1]).running)
        finally:
            sub.disconnect()
            sub.loop_stop()
    assert emu.stats.max_lag_s < 60.0  # kept up with 10 simulated minutes per wall second


@pytest.mark.service
def test_a_followed_clock_whose_emulator_stops_dies_or_restarts_is_a_fault(broker):
    """The loop of ``clock = "emulator"`` keeps listening: a retained anchor from a killed emulator
    (still "running", but its time an hour old), a stopped one, or a restarted one is a fault."""
    from pems.live.mqtt import ClockFollower

    start = pd.Timestamp("2024-01-10T00:00Z")
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="fake-emulator")
    pub.connect(broker.host, broker.port)
    pub.loop_start()

    def announce(clock: SimClock, at: pd.Timestamp, running: bool = True) -> None:
        pub.publish(TIME_TOPIC, clock.anchor(at, running=running).to_json(), qos=1, retain=True).wait_for_publish()

    emu_clock = SimClock(start, speed=600.0)
    try:
        announce(emu_clock, emu_clock.now())
        clock = ClockFollower(broker.host, broker.port, **FAST).follow(stale_s=2700.0)
        try:
            assert clock.fault() is None and abs((clock.now() - emu_clock.now()).total_seconds()) < 60
            announce(emu_clock, emu_clock.now() - pd.Timedelta(hours=1))  # what a killed emulator left behind
            assert wait_until(lambda: (clock.fault() or "").startswith("clock: the emulator last announced"))
            assert "is `pems emulate` still running?" in clock.fault()
            announce(emu_clock, emu_clock.now())
            assert wait_until(lambda: clock.fault() is None)  # it speaks again: healthy
            announce(emu_clock, emu_clock.now(), running=False)
            assert wait_until(lambda: clock.fault() == "clock: the emulator has stopped (its clock says running: false)")
            restarted = SimClock(start, speed=600.0, epoch=emu_clock.epoch + 30.0)  # started again half a minute on
            announce(restarted, restarted.now())
            assert wait_until(lambda: "restarted" in (clock.fault() or ""))
        finally:
            clock.close()
    finally:
        pub.loop_stop()
        pub.disconnect()


@pytest.mark.service
def test_a_loop_started_as_the_emulator_starts_follows_its_clock_not_the_stopped_one_left_before(plain_prep, broker):
    """An emulator that has ended leaves its clock retained on the broker, saying running: false.
    A follower never takes that clock for the one to follow: alone, it says the emulator stopped;
    waiting, it follows the next emulator. That emulator's ``start()`` returns only once the broker
    holds its running clock, so a loop started right after it cannot see the old one."""
    from pems.live.mqtt import ClockFollower, MqttConnectError

    start = plain_prep.scenario.start
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="ended-emulator")
    pub.connect(broker.host, broker.port)
    pub.loop_start()
    try:
        ended = SimClock(start, speed=600.0, epoch=time.time() - 3600.0)
        pub.publish(TIME_TOPIC, ended.anchor(ended.now(), running=False).to_json(), qos=1,
                    retain=True).wait_for_publish()
    finally:
        pub.loop_stop()
        pub.disconnect()
    with pytest.raises(MqttConnectError, match=r"has stopped: its clock, last announced at .* says running: false"):
        ClockFollower(broker.host, broker.port, **FAST).follow(stale_s=2700.0, timeout_s=0.5)

    waited: dict[str, object] = {}

    def follow_in_background() -> None:
        try:
            waited["clock"] = ClockFollower(broker.host, broker.port, **FAST).follow(stale_s=2700.0, timeout_s=10.0)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            waited["error"] = exc

    waiting = threading.Thread(target=follow_in_background)
    waiting.start()
    time.sleep(0.3)  # subscribed, holding the ended clock
    emu = emulator(plain_prep, broker, SimClock(start, speed=600.0), hours=1)
    with emu:
        on_broker = ClockFollower(broker.host, broker.port, **FAST).anchor(timeout_s=2.0)  # the instant start() returned
        assert on_broker.running and on_broker.epoch == pytest.approx(emu.clock.epoch)
        right_after = ClockFollower(broker.host, broker.port, **FAST).follow(stale_s=2700.0, timeout_s=2.0)
        waiting.join(10.0)
        clocks = [right_after, waited.get("clock")]
        try:
            assert "error" not in waited, waited.get("error")
            for clock in clocks:
                assert clock.epoch == pytest.approx(emu.clock.epoch) and clock.fault() is None
            assert emu.wait_until(start + pd.Timedelta(minutes=30))  # its own announcements since: no "restart"
            assert all(clock.fault() is None for clock in clocks)
        finally:
            for clock in clocks:
                if clock is not None:
                    clock.close()


# ---------------------------------------------------------------------------------------------
# (d) pems emulate: accelerated real time, outputs pass the shared check
# ---------------------------------------------------------------------------------------------
@pytest.mark.service
def test_pems_emulate_writes_outputs_that_pass_the_shared_check(battery_scenario, broker, tmp_path, capsys):
    check = shared_check("check_trajectory.py")
    out = tmp_path / "out"
    t0 = time.perf_counter()
    code = main(["emulate", str(battery_scenario), "--mqtt", f"{broker.host}:{broker.port}", "--modbus-port", "0",
                 "--speed", "20000", "--hours", "6", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    assert time.perf_counter() - t0 < 20
    assert "wrote" in capsys.readouterr().out
    tr = pd.read_parquet(out / "trajectory.parquet")
    assert len(tr) == 24 and tr.index[0] == load_scenario(battery_scenario).start
    kpis = json.loads((out / "kpis.json").read_text())
    assert kpis["controller"] == "emulator" and kpis["heating_kWh"] > 0
    assert (out / "events.jsonl").exists()
    done = subprocess.run([sys.executable, str(check), str(out), "2"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("args, key", [
    (["--mqtt", "localhost:"], "--mqtt"),
    (["--mqtt", "localhost:99999"], "--mqtt"),
    (["--mqtt", "127.0.0.1:1883", "--speed", "0"], "--speed"),
    (["--mqtt", "127.0.0.1:1883", "--hours", "48"], "--hours"),
    (["--mqtt", "127.0.0.1:1883", "--modbus-port", "70000"], "--modbus-port"),
    (["--mqtt", "127.0.0.1:1883", "--layout", "nosuch"], "layout"),
])
def test_pems_emulate_bad_input_is_one_line_and_exit_2(battery_scenario, args, key, capsys):
    code = main(["emulate", str(battery_scenario), *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and key in err[0] and "Traceback" not in err[0], err


def test_pems_emulate_unknown_scenario_is_exit_2(capsys):
    assert main(["emulate", "no-such-scenario", "--mqtt", f"127.0.0.1:{free_port()}"]) == 2
    assert "no-such-scenario" in capsys.readouterr().err
