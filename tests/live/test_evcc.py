"""The car through evcc's MQTT interface: the loop's loadpoint client against the emulated evcc, and
the live loop charging the emulated home's car (real mosquitto on 127.0.0.1)."""

from __future__ import annotations

import socket
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from helpers import BATTERY_HOUSE, FAST, wait_for, write_scenario  # noqa: E402
from test_loop import SPEED, at, check_no_gap, events, kinds  # noqa: E402

from pems.live.evcc import EvccLoadpoint  # noqa: E402
from pems.live.evcc_home import EvccSim  # noqa: E402
from pems.twin.ev import Charger  # noqa: E402

pytestmark = pytest.mark.service

CHARGER = Charger(min_current_a=6, max_current_a=16, phases=3, phase_switching=True)
# The battery house with a car: out at 01:30 and back at 02:30 local time with 12 kWh used, out
# again at 06:30 (the departure its target is for).
CAR = {"id": "car", "capacity_kwh": 40.0, "target_soc": 0.8,
       "charger": {"min_current_a": 6, "max_current_a": 10, "phases": 3},
       "trips": [{"days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"], "out": "01:30", "back": "02:30",
                  "drive_kwh": 12.0},
                 {"days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"], "out": "06:30", "back": "09:00",
                  "drive_kwh": 1.0}]}


@pytest.fixture
def evcc(broker):
    sim = EvccSim(broker.host, broker.port, {1: CHARGER}, mode="pv", **FAST)
    sim.connect()
    yield sim
    sim.close()


@pytest.fixture(scope="module")
def car_prep(tmp_path_factory):
    from pems.scenarios.runner import prepare
    from pems.scenarios.spec import load_scenario

    folder = tmp_path_factory.mktemp("car")
    return prepare(load_scenario(write_scenario(folder, {**BATTERY_HOUSE, "ev": [CAR]}, weather="greensboro-tmy3",
                                                load="h25", prices="two-rate")))


def test_the_loadpoint_reads_evcc_and_commands_powers_the_charger_can_give(broker, evcc):
    lp = EvccLoadpoint(broker.host, broker.port, 1, CHARGER, **FAST)
    lp.connect()
    try:
        evcc.publish_state(1, plugged=True, power_w=0.0, soc=0.42)
        assert wait_for(lambda: lp.read().plugged is True and lp.read().mode == "pv")
        r = lp.read()
        assert r.soc == pytest.approx(0.42) and r.charging is False and r.evcc_online is True
        # 2.3 kW: one phase at 10 A (phase switching); 7 kW: three phases at 10.14 A; 900 W: off
        for asked, phases, amps in ((2300.0, 1, 10.0), (7000.0, 3, 7000.0 / 690.0)):
            n = len(evcc.commands())
            recs = lp.command(asked)
            assert all(w.sent for w in recs)
            assert wait_for(lambda: len(evcc.commands()) >= n + 3)
            lps = evcc.loadpoints[1]
            assert (lps.mode, lps.phases, lps.max_current_a) == ("now", phases, pytest.approx(amps, abs=0.005))
            assert evcc.power(1, 0.0) == pytest.approx(CHARGER.feasible(asked), abs=5)
        lp.command(900.0)  # below the minimum current: off, not a trickle
        assert wait_for(lambda: evcc.mode(1) == "off") and evcc.power(1, 5000.0) == 0.0
        lp.command(5000.0)
        recs = lp.release()  # evcc's own logic, and the wallbox's own current limit and phases
        assert [w.target.rsplit("/", 2)[-2] for w in recs] == ["mode", "maxCurrent", "phases"]
        assert wait_for(lambda: evcc.mode(1) == "pv" and evcc.loadpoints[1].max_current_a == 16.0
                        and evcc.loadpoints[1].phases == 0)
        # in pv mode evcc charges from the surplus only: nothing below the minimum, never above the limit
        assert evcc.power(1, 1000.0) == 0.0 and evcc.power(1, 3000.0) == 3000.0
        assert evcc.power(1, 50_000.0) == CHARGER.max_w
    finally:
        lp.close()


def test_a_loop_that_dies_hands_the_car_back_through_its_last_will(broker, evcc):
    lp = EvccLoadpoint(broker.host, broker.port, 1, CHARGER, handback_mode="minpv", **FAST)
    lp.connect()
    lp.command(11000.0)
    assert wait_for(lambda: evcc.mode(1) == "now")
    # the process dies: its socket closes without an MQTT DISCONNECT, the broker sends the will
    client = lp._client
    client.loop_stop()
    client.socket().shutdown(socket.SHUT_RDWR)
    client.socket().close()
    assert wait_for(lambda: evcc.mode(1) == "minpv", timeout=10), evcc.commands()


def _car_run(prep, broker, tmp_path, hours, inject=None, controller="mpc"):
    from pems.live.emulated_run import EmulatedRun

    ev = tmp_path / "events.jsonl"
    r = EmulatedRun(prep, broker.host, broker.port, speed=SPEED, hours=hours, events_path=ev, mqtt_options=FAST,
                    controller=controller)
    r.start()
    th = threading.Thread(target=inject, args=(r,)) if inject else None
    if th:
        th.start()
    res = r.finish()
    if th:
        th.join(30)
    evs = events(ev)
    check_no_gap(evs, int(round(hours * 4)))
    return r, res, evs


def test_the_loop_charges_the_emulated_car_as_planned_and_meets_its_departure(car_prep, broker, tmp_path):
    r, res, evs = _car_run(car_prep, broker, tmp_path, hours=6.0)
    truth = r.emu.result()
    traj, kp = truth.trajectory, truth.kpis
    # the car came back at 02:30 local (01:30 UTC) 12 kWh down and left at 06:30 (05:30 UTC) at its target
    assert kp["ev_departures"] == 2 and kp["ev_departures_missed"] == 0, kp
    assert kp["ev_energy_kWh"] >= 12.0 / 0.9 - 0.2
    # charging only while plugged in, never below the minimum current nor above the maximum
    p = traj["P_ev__car"].to_numpy()
    plugged = traj["ev_plugged__car"].to_numpy()
    assert np.all(p[plugged == 0] == 0)
    cmds = [e for e in r.emu.events() if e.get("device") == "evcc"]
    assert {c["kind"] for c in cmds} >= {"mode", "maxCurrent"}
    amps = [float(c["value"]) for c in cmds if c["kind"] == "maxCurrent"]
    assert amps and all(6.0 - 1e-9 <= a <= 10.0 + 1e-9 for a in amps)
    # the plant's step balance with the car: grid = household + heat + car + battery − PV
    heat = traj[[c for c in traj if c.startswith("P_heat__") and "cmd" not in c]].sum(axis=1)
    resid = traj["P_grid"] - (traj["P_load"] + heat + traj["P_bat"] - traj["P_pv"] + traj["P_loss"])
    assert resid.abs().max() < 1e-6
    np.testing.assert_allclose(traj["P_load"] - traj["P_load_household"], p, atol=1e-9)
    # what the loop observed of the car is what the emulated evcc said
    steps = kinds(evs, "step")
    assert steps and all(e["state"] == "active" for e in steps[1:])


def test_after_a_broker_outage_the_car_is_handed_back_to_evccs_own_mode(car_prep, broker, tmp_path):
    marks: dict[str, float] = {}

    def inject(r):
        # 03:00 UTC: the car is home and charging for its 06:30 departure
        assert r.emu.wait_until(at(car_prep, 2.5), timeout=60)
        assert wait_for(lambda: r.emu.evcc.mode(1) in ("now", "off"), timeout=20)
        broker.stop()
        time.sleep(0.3)
        marks["up"] = time.time()
        broker.start()

    r, res, evs = _car_run(car_prep, broker, tmp_path, hours=4.0, inject=inject)
    assert kinds(evs, "fallback"), "the loop did not fall back on the broker outage"
    back = [c for c in r.emu.evcc.commands() if c.time.timestamp() >= marks["up"] - 0.05]
    modes = [c.value for c in back if c.key == "mode"]
    # evcc's own mode came once the broker was back (a step may come first when the watchdog notices
    # the outage only from the stale values it left), and the loop took the car again when it recovered
    assert "pv" in modes, back
    assert any(m in ("now", "off") for m in modes[modes.index("pv") + 1:]), modes


def test_pems_live_with_evcc_in_its_config_charges_the_car_and_hands_it_back(car_prep, broker, tmp_path):
    """``pems live --config`` with ``[evcc]`` against the emulator of the house with the car: the loop
    takes the loadpoint (``now``/``off`` with currents) and at its end hands it back to ``pv``."""
    import tomli_w

    from pems.cli import main
    from pems.live.emulator import Emulator

    emu = Emulator(car_prep, broker.host, broker.port, modbus_port=0, speed=400.0, hours=2.0, mqtt_options=FAST)
    (tmp_path / "house.toml").write_text(tomli_w.dumps({**BATTERY_HOUSE, "ev": [CAR]}), encoding="utf-8")
    cfg = {"house": "house.toml", "clock": "emulator", "state_dir": str(tmp_path / "state"),
           "mqtt": {"host": broker.host, "port": broker.port},
           "modbus": {"host": "127.0.0.1", "port": 5020},
           "evcc": {"loadpoints": {"car": 1}},
           "forecast": {"weather": "greensboro-tmy3", "load": "h25", "prices": "two-rate"}}
    emu.start()
    try:
        cfg["modbus"]["port"] = emu.modbus_port
        (tmp_path / "live.toml").write_text(tomli_w.dumps(cfg), encoding="utf-8")
        rc = main(["live", "--config", str(tmp_path / "live.toml"), "--hours", "1.5"])
        # the hand-back is sent when the loop ends; the emulator hears it over the broker a moment later
        # (a clean-clone run read the commands before it had)
        handed_back = wait_for(lambda: emu.evcc.mode(1) == "pv", timeout=10)
        cmds = emu.evcc.commands()
    finally:
        emu.stop()
    assert rc == 0
    assert any(c.key == "mode" and c.value in ("now", "off") for c in cmds), cmds
    assert handed_back and cmds[-1].key in ("mode", "maxCurrent", "phases"), cmds[-3:]
