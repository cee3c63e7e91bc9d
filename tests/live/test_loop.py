"""The live loop against the emulator, over a real mosquitto and a real pymodbus server (127.0.0.1).

Each test runs the emulated two-room battery house and a :class:`~pems.live.loop.LiveLoop` with the
economic MPC on one accelerated :class:`~pems.live.clock.SimClock` (1000×: a control step is 0.9 s
of wall time; the solves run at real time). The fault tests are in ``test_loop_faults.py``.

(4) "a write outside the allow-list is refused before the socket" is tested in
``tests/live/test_growatt.py`` (the write guard); not repeated here.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pandas as pd
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

sys.path.insert(0, str(Path(__file__).parent))
from helpers import BATTERY_HOUSE, FAST, write_scenario  # noqa: E402

from pems.live.emulated_run import EmulatedRun  # noqa: E402
from pems.live.loop import LoopSettings  # noqa: E402
from pems.live.translate import battery_command  # noqa: E402
from pems.live.safety import BatteryLimits, SafetyLimits, Watchdog  # noqa: E402
from pems.live.devices import InverterReadings, RoomReadings  # noqa: E402
from pems.live.state import StateLocked, StateStore  # noqa: E402
from pems.scenarios.kpis import compute_kpis  # noqa: E402
from pems.scenarios.runner import run  # noqa: E402

SPEED = 1000.0
DAY_SPEED = 1500.0  # the day: 58 s of wall time plus the solves (at 2500× a loaded machine shifted the relays enough to cost 5 %)


def events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def kinds(evs: list[dict], kind: str) -> list[dict]:
    return [e for e in evs if e["kind"] == kind]


def at(prep, hours: float) -> pd.Timestamp:
    return prep.scenario.start + pd.Timedelta(hours=hours)


def check_no_gap(evs: list[dict], n: int, labels: bool = True) -> None:
    steps = kinds(evs, "step")
    assert [e["step"] for e in steps] == list(range(n))
    mono = [e["mono_s"] for e in steps]
    # one record per step: a skipped step shows as 1800 s, a doubled one as ~0 s; half a step of slack
    # keeps a loaded machine's scheduling jitter (0.12 s of wall time at 1000x) from failing the test
    assert all(abs(b - a - 900.0) < 450.0 for a, b in zip(mono, mono[1:]))
    if not labels:  # a calendar jump moves the labels (by design), never the schedule
        return
    t = pd.DatetimeIndex([e["time"] for e in steps])
    assert (t[1:] - t[:-1] == pd.Timedelta(minutes=15)).all()


# ---------------------------------------------------------------------------------------------
# pure pieces
# ---------------------------------------------------------------------------------------------
def test_battery_translation():
    lim = BatteryLimits(2500, 3000, 0.1, 0.9)
    s, until = LoopSettings(), pd.Timestamp("2024-01-10T01:00Z")
    assert battery_command(None, 0, 500, lim, s, until).priority == "load_first"
    hold = battery_command(10.0, 0, 500, lim, s, until)
    assert (hold.priority, hold.power_pct) == ("battery_first", 0.0)
    ch = battery_command(1250.0, 0.0, 500, lim, s, until)
    assert (ch.priority, ch.power_pct, ch.ac_charge) == ("battery_first", 50.0, True)
    assert not battery_command(1000.0, 3000.0, 500, lim, s, until).ac_charge  # PV delivers it
    assert battery_command(-450.0, 0.0, 500, lim, s, until).priority == "load_first"  # covers the load
    gf = battery_command(-1500.0, 0.0, 500, lim, s, until)
    assert (gf.priority, gf.power_pct, gf.soc_limit) == ("grid_first", 50.0, 0.1)


def test_watchdog_rules_and_hysteresis():
    wd = Watchdog(("a",), SafetyLimits(republish_s=900, recover_after=2))
    t0 = pd.Timestamp("2024-01-10T00:00Z")
    inv = InverterReadings(t0, 0, 0.5, 0, 0, 0, 0, 0)

    def rr(v, age=10.0, connected=True):
        return RoomReadings(t0, {"a": v}, {"a": 0.0}, 0.0, {"T_room__a": age}, connected)

    def sample(k, v, **kw):
        t = t0 + pd.Timedelta(minutes=k)
        return wd.update(t, wd.check(t, 60.0 * k, rr(v, **kw), inv))

    assert sample(0, 21.0) is None and wd.state == "active"
    tr = sample(1, float("nan"))
    assert tr.state == "fallback" and "nan" in tr.reasons[0]
    assert sample(2, 21.0) is None  # one healthy sample is not enough
    assert sample(3, 21.1).state == "active"
    assert sample(4, 30.0).reasons[0].startswith("jump")  # +9 K in a minute
    sample(5, 21.0), sample(6, 21.0)
    assert wd.state == "active"
    assert "range" in sample(7, -40.0).reasons[0]
    sample(8, 21.0), sample(9, 21.0)
    assert "stale" in sample(10, 21.0, age=2000.0).reasons[0]
    sample(11, 21.0), sample(12, 21.0)
    assert "broker" in sample(13, 21.0, connected=False).reasons[0]


def _feed(wd, values, dt_s=60.0, ages=None):
    """Samples of room "a" a minute apart; the faults of each."""
    t0 = pd.Timestamp("2024-01-10T00:00Z")
    out = []
    for k, v in enumerate(values):
        t = t0 + pd.Timedelta(seconds=k * dt_s)
        rr = RoomReadings(t, {"a": v}, {"a": 0.0}, 0.0, {"T_room__a": 10.0 if ages is None else ages[k]}, True)
        f = wd.check(t, k * dt_s, rr, None)
        wd.update(t, f)
        out.append(f)
    return out


def test_a_ramp_of_kelvins_a_minute_trips_the_jump_rule():
    """2.9 K a minute stays under the 3 K allowed between two samples, never over a window."""
    ramp = [20.0 + 2.9 * k for k in range(5)]
    faults = _feed(Watchdog(("a",), SafetyLimits()), ramp)
    assert not faults[1]
    assert any(f.startswith("jump") for f in faults[2]), faults
    # what a floor-heated room really does (1.5 K/h, 0.1 K sensor steps) never trips it
    real = [round(20.0 + 1.5 * k / 60.0, 1) for k in range(240)]
    assert not any(_feed(Watchdog(("a",), SafetyLimits()), real))


def test_a_jump_is_held_until_plausible_against_the_last_plausible_value():
    wd = Watchdog(("a",), SafetyLimits(recover_after=1))
    faults = _feed(wd, [20.0] * 3 + [28.0] * 120)  # jumped by 8 K and stays there for two hours
    assert all(any(f.startswith("jump") for f in fs) for fs in faults[3:120])  # 3 K + 2 K/h · 2 h = 7 K
    assert wd.state == "fallback"


def test_a_stuck_sensor_is_a_fault_by_default():
    lim = SafetyLimits()
    assert lim.stuck_s == 8 * 3600.0
    faults = _feed(Watchdog(("a",), lim), [21.3] * (9 * 4), dt_s=900.0)  # nine hours, sampled each step
    first = next(k for k, f in enumerate(faults) if f)
    assert faults[first][0].startswith("stuck") and first * 900.0 > lim.stuck_s
    assert first * 900.0 <= lim.stuck_s + 900.0


def test_implausible_outdoor_and_inverter_values():
    wd = Watchdog(("a",), SafetyLimits())
    assert wd.outdoor(-12.0) is None and wd.outdoor(float("nan")) is None  # nan: no sensor, the forecast's
    assert "range" in wd.outdoor(500.0) and wd.outdoor(float("inf"))
    t0 = pd.Timestamp("2024-01-10T00:00Z")
    rr = RoomReadings(t0, {"a": 21.0}, {"a": 0.0}, 0.0, {"T_room__a": 1.0}, True)
    bad = InverterReadings(t0, 1e9, 0.5, 0, 0, 0, 0, float("nan"))
    faults = wd.check(t0, 0.0, rr, bad)
    assert any("P_pv" in f for f in faults) and any("P_load" in f for f in faults)


def test_state_lock_refuses_a_second_loop(tmp_path):
    a, b = StateStore(tmp_path), StateStore(tmp_path)
    a.lock()
    with pytest.raises(StateLocked):
        b.lock()
    a.unlock()
    b.lock()
    b.unlock()


# ---------------------------------------------------------------------------------------------
# (1) a simulated day against the emulator ≈ the in-process MPC (and the rule-based baseline)
# ---------------------------------------------------------------------------------------------
@pytest.mark.service
@pytest.mark.slow
def test_the_rule_based_baseline_runs_live_with_the_same_meaning(prep, broker, tmp_path):
    """Set-points, not powers: the loop realises them with the one thermostat at every inner tick,
    under its own control (mode pems, no fallback), and the home's half day matches ``pems simulate``."""
    ev = tmp_path / "events.jsonl"
    # half a day at 1000× (the thermostat's writes at every tick would crowd 2500×)
    r = EmulatedRun(prep, broker.host, broker.port, speed=SPEED, hours=12.0, controller="rule-based",
                    events_path=ev, mqtt_options=FAST)
    r.start()
    res = r.finish()
    evs = events(ev)
    check_no_gap(evs, 48)
    assert not kinds(evs, "fallback") and not kinds(evs, "solver_fallback")
    steps = kinds(evs, "step")
    assert all(e["solver_ok"] and e["state"] == "active" and "setpoint_c" in e for e in steps)
    assert (res.trajectory["mode_pems__a"].iloc[1:] == 1).all()  # the loop's thermostat, not the home's
    ref = run(prep, "rule-based")
    n = len(res.trajectory)
    b = prep.model.house.battery
    k, k_ref = res.kpis, compute_kpis(ref.trajectory.iloc[:n], prep.model.rooms,
                                      b.capacity_kwh * (b.soc_max - b.soc_min))
    print({key: (k[key], k_ref[key]) for key in ("cost", "discomfort_Kh", "heating_kWh", "relay_switches")})
    assert k["heating_kWh"] == pytest.approx(k_ref["heating_kWh"], rel=0.05)
    assert k["cost"] == pytest.approx(k_ref["cost"], rel=0.05)
    assert k["discomfort_Kh"] <= k_ref["discomfort_Kh"] + 0.5

@pytest.mark.service
@pytest.mark.slow
def test_closed_loop_day_matches_in_process_mpc(prep, broker, tmp_path):
    ev = tmp_path / "events.jsonl"
    r = EmulatedRun(prep, broker.host, broker.port, speed=DAY_SPEED, events_path=ev, mqtt_options=FAST)
    r.start()
    res = r.finish()
    ref = run(prep, "mpc")
    n = len(res.trajectory)
    assert n == 96
    evs = events(ev)
    check_no_gap(evs, 96)
    # a step late by more than an inner tick (40 ms of wall time at 1500×) is said and still run: a loaded
    # machine stalls that long now and then (a clean-clone run: one step of 96, 0.16 s); a loop that fell
    # behind for good would be late at step after step
    assert len(kinds(evs, "overrun")) <= 2
    k = res.kpis
    b = prep.model.house.battery
    k_ref = compute_kpis(ref.trajectory.iloc[:n], prep.model.rooms, b.capacity_kwh * (b.soc_max - b.soc_min))
    print({key: (k[key], k_ref[key]) for key in ("cost", "discomfort_Kh", "heating_kWh", "energy_import_kWh")})
    assert k["cost"] == pytest.approx(k_ref["cost"], rel=0.05)
    assert k["heating_kWh"] == pytest.approx(k_ref["heating_kWh"], rel=0.05)
    assert k["discomfort_Kh"] <= k_ref["discomfort_Kh"] + 0.5  # both ~0: a relative bound is meaningless


# ---------------------------------------------------------------------------------------------
# (2) dry-run sends nothing
# ---------------------------------------------------------------------------------------------
@pytest.mark.service
def test_dry_run_sends_nothing(prep, broker, tmp_path):
    seen: list[str] = []
    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="spy")
    sub.on_connect = lambda c, u, f, rc, p: c.subscribe("#", qos=1)
    sub.on_message = lambda c, u, msg: seen.append(msg.topic)
    sub.connect(broker.host, broker.port)
    sub.loop_start()
    ev = tmp_path / "events.jsonl"
    try:
        r = EmulatedRun(prep, broker.host, broker.port, speed=SPEED, hours=1.0, events_path=ev, dry_run=True,
                        mqtt_options=FAST)
        r.start()
        res = r.finish()
    finally:
        sub.loop_stop()
        sub.disconnect()
    # no command, status, heartbeat or problem: only the emulator's own clock among the pems/ topics
    assert not [t for t in seen if t.endswith("/set") or (t.startswith("pems/") and t != "pems/emulator/time")], seen
    assert r.emu.growatt.writes == [] and r.emu.stats.commands == 0
    evs = events(ev)
    cmds = kinds(evs, "command")
    assert cmds and all(not c["sent"] for c in cmds), {c["reason"] for c in cmds}
    assert all("dry-run" in c["reason"] for c in cmds), {c["reason"] for c in cmds}
    # the device differs from the plan because nothing was written, not because of the Growatt app
    assert not kinds(evs, "inverter_changed"), kinds(evs, "inverter_changed")[:2]
    assert all(e["solver_ok"] for e in kinds(evs, "step"))
    assert (res.trajectory[["mode_pems__a", "mode_pems__b"]] == 0).all().all()


# ---------------------------------------------------------------------------------------------
# (5) restart resumes the estimator and re-applies no stale commands
# ---------------------------------------------------------------------------------------------
@pytest.mark.service
def test_restart_resumes_estimator_state(prep, broker, tmp_path):
    state = tmp_path / "state"
    ev1, ev2 = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    r = EmulatedRun(prep, broker.host, broker.port, speed=SPEED, hours=2.0, events_path=ev1, state_dir=state,
                    mqtt_options=FAST)
    r.warm_up()
    r.n_steps = 4  # the first loop runs one hour, then "crashes"
    r.start()
    r.wait()
    saved = json.loads((state / "state.json").read_text())
    r.loop.close(handback=False)
    assert saved["mode"] == "pems" and saved["estimator_x"] is not None
    seen: list[tuple[str, bytes]] = []  # what the home hears from the new loop, in order
    spy = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="spy-restart")
    spy.on_connect = lambda c, u, f, rc, p: c.subscribe([("pems/status", 1), ("loxone/room/+/heating/set", 1)])
    spy.on_message = lambda c, u, msg: seen.append((msg.topic, msg.payload)) if not msg.retain else None
    spy.connect(broker.host, broker.port)
    spy.loop_start()
    time.sleep(0.2)
    loop2 = r.new_loop(events_path=ev2)
    loop2.start()
    est = r.controller.estimator
    assert list(est.x) == pytest.approx(saved["estimator_x"])  # resumed, not re-initialised
    r.run_loop(loop2, 4, r.step_mono(4))
    res = r.finish()
    spy.loop_stop()
    spy.disconnect()
    # "online" only after the new loop's own fresh relay commands: a Miniserver trusting the status
    # never resumes the dead loop's commands in between
    online = [i for i, (t, p) in enumerate(seen) if t == "pems/status" and p == b"1"]
    relays = [i for i, (t, _) in enumerate(seen) if t.endswith("/heating/set")]
    assert online and relays and relays[0] < online[0], seen[:8]
    evs2 = events(ev2)
    assert kinds(evs2, "state")[0]["resumed"] is True
    # The new loop sees only the broker's retained values, of unknown age: stale until fresh ones
    # come. It re-applies none of the dead loop's commands; it keeps the rooms at home until its
    # data is fresh (the next republish at the latest), then takes them.
    first_step = min(i for i, e in enumerate(evs2) if e["kind"] == "step")
    before = [e for e in evs2[:first_step] if e["kind"] == "command" and not e["fallback"]]
    assert all(pd.Timestamp(e["time"]) >= at(prep, 1.0) for e in before), before  # the first step's own
    steps2 = kinds(evs2, "step")
    assert [e["step"] for e in steps2] == [0, 1, 2, 3]
    assert steps2[-1]["state"] == "active" and "heat_w" in steps2[-1]  # commanding again
    assert pd.Timestamp(kinds(evs2, "step")[0]["time"]) == at(prep, 1.0)
    assert len(res.trajectory) == 8


@pytest.mark.service
def test_pems_live_emulate_writes_truth_and_log(prep, broker, tmp_path, capsys):
    """`pems live --emulate`: the command a user runs; three hours of the two-room battery house."""
    from pems.cli import main

    from services import free_port

    out = tmp_path / "live"
    nobody = f"influx://127.0.0.1:{free_port()}/pems"  # an InfluxDB that is down all along
    assert main(["live", "--emulate", str(prep.scenario.path), "--mqtt", f"{broker.host}:{broker.port}",
                 "--hours", "3", "--speed", str(SPEED), "--out", str(out), "--influx", nobody]) == 0
    traj = pd.read_parquet(out / "trajectory.parquet")
    assert len(traj) == 12  # 3 h of 15-min steps
    k = json.loads((out / "kpis.json").read_text())
    assert k["heating_kWh"] > 0 and "cost" in k
    evs = events(out / "events.jsonl")
    assert len(kinds(evs, "step")) == 12 and not kinds(evs, "fallback")
    assert kinds(evs, "log_store")[0]["state"] == "down"  # logged, and control went on
    cap = capsys.readouterr()
    assert "wrote" in cap.out and "lines kept in" in cap.err
    from pems.live.influx_log import read_spool

    assert len(list(read_spool(out / "spool"))) > 12 * 4  # measured, commanded, estimated, planned: all kept


@pytest.mark.service
def test_a_dry_run_writes_nothing_to_influxdb_either(prep, broker, tmp_path, capsys):
    """`pems live --emulate --dry-run --influx URL` against a real influxd: not one point, and the user
    is told why."""
    import requests
    from services import influxdb1

    from pems.cli import main

    with influxdb1(tmp_path) as base:
        url = base.replace("http://", "influx://") + "/pems_dry"
        assert main(["live", "--emulate", str(prep.scenario.path), "--mqtt", f"{broker.host}:{broker.port}",
                     "--hours", "1", "--speed", str(SPEED), "--out", str(tmp_path / "out"), "--influx", url,
                     "--dry-run"]) == 0
        assert "not written" in capsys.readouterr().err
        r = requests.post(f"{base}/query", data={"q": "SHOW DATABASES"}, timeout=10).json()["results"][0]
        dbs = [v[0] for sr in r.get("series", []) for v in sr.get("values", [])]
        assert "pems_dry" not in dbs  # not even created
    assert not (tmp_path / "out" / "spool").exists()


@pytest.mark.service
def test_pems_live_emulate_with_correctors_learns_from_the_homes_history(broker, tmp_path, capsys):
    """A scenario whose true home has unmodelled gains: mpc+correctors learns its corrector from the
    history before the start (as `pems simulate` does) and runs the home over the same sockets."""
    from helpers import write_constant_inputs

    from pems.cli import main

    write_constant_inputs(tmp_path, "2023-12-01T00:00:00Z", 45, T_out=-3.0, ghi=0.0)
    gains = [{"room": "a", "watts": 400.0, "hours": [[17.0, 21.0]], "day_to_day": 0.1}]
    path = write_scenario(tmp_path, {k: v for k, v in BATTERY_HOUSE.items() if k not in ("pv", "battery")},
                          truth={"train_days": 14, "gains": gains}, forecast={"horizon_hours": 24})
    out = tmp_path / "live"
    assert main(["live", "--emulate", str(path), "--mqtt", f"{broker.host}:{broker.port}", "--hours", "2",
                 "--speed", str(SPEED), "--controller", "mpc+correctors", "--out", str(out)]) == 0
    evs = events(out / "events.jsonl")
    steps = kinds(evs, "step")
    assert len(steps) == 8 and all(e["solver_ok"] and e["state"] == "active" for e in steps)
    assert "learned the residual corrector from the home's 14 days of history" in capsys.readouterr().out
    plain = tmp_path / "plain.toml"
    plain.write_text(path.read_text().split("[truth]")[0])
    assert main(["live", "--emulate", str(plain), "--mqtt", f"{broker.host}:{broker.port}",
                 "--controller", "mpc+correctors", "--out", str(out)]) == 2
    assert "mpc+correctors" in capsys.readouterr().err


def test_pems_live_bad_input_is_one_line(tmp_path, capsys):
    from pems.cli import main

    assert main(["live", "--emulate", "winter-week"]) == 2
    assert "--mqtt" in capsys.readouterr().err
    assert main(["live", "--config", str(tmp_path / "home.toml")]) == 2
    err = capsys.readouterr().err
    assert "file not found" in err and "Traceback" not in err


@pytest.mark.parametrize("change", [
    {"relays": []}, {"rooms": "a"}, {"estimator_x": ["warm", 1.0]}, {"saved_at": 1704844800},
    {"battery": {"priority": "battery_first", "power_pct": "lots"}}, {"battery": {"bogus": 1}},
    {"saved_at": "2024-01-10T00:00:00"}, {"surprise": 1},
])
def test_a_state_file_of_wrong_types_is_kept_aside_and_the_loop_starts_fresh(tmp_path, change):
    from pems.live.state import LoopState, StateStore

    store = StateStore(tmp_path)
    now = pd.Timestamp("2024-01-10T00:05Z")
    good = LoopState(saved_at="2024-01-10T00:00:00+00:00", step_time="2024-01-10T00:00:00+00:00", rooms=["a", "b"],
                     estimator_x=[20.0, 21.0], relays={"a": True, "b": False},
                     battery={"priority": "battery_first", "power_pct": 40.0, "soc_limit": 0.9, "ac_charge": True,
                              "until": "2024-01-10T00:22:30+00:00"})
    store.save(good)
    st, why = store.load(now, 1800.0, ("a", "b"))
    assert st is not None and st.battery_command().power_pct == 40.0, why
    d = json.loads(store.path.read_text())
    d.update(change)
    store.path.write_text(json.dumps(d))
    st, why = store.load(now, 1800.0, ("a", "b"))
    assert st is None and "unreadable" in why and "kept aside as state.unreadable-" in why, why
    assert not store.path.exists()
    kept = list(tmp_path.glob("state.unreadable-*.json"))
    assert len(kept) == 1 and json.loads(kept[0].read_text()) == d  # nothing the user had is lost
