"""``pems live --config``: a home's live configuration, its forecasts, and the loop it opens.

The configuration tests are fast (no sockets). The end-to-end tests run ``pems live --config`` in
this process against the emulator (a real mosquitto and a real pymodbus server on 127.0.0.1), the
loop following the emulator's clock over MQTT (``clock = "emulator"``), as a trial of a real
home's file would.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tomli_w

sys.path.insert(0, str(Path(__file__).parent))
from helpers import BATTERY_HOUSE, FAST  # noqa: E402

from pems.cli import main  # noqa: E402
from pems.errors import InputError  # noqa: E402
from pems.live.config import LiveForecast, load_live_config  # noqa: E402

EXAMPLE = Path(__file__).parents[2] / "docs" / "live-example.toml"


def write_config(folder: Path, **keys) -> Path:
    (folder / "house.toml").write_text(tomli_w.dumps(BATTERY_HOUSE), encoding="utf-8")
    cfg = {"house": "house.toml", "mqtt": {"host": "127.0.0.1", "port": 1883},
           "forecast": {"weather": "greensboro-tmy3", "load": "h25", "prices": "two-rate"}}
    for k, v in keys.items():
        if isinstance(v, dict) and isinstance(cfg.get(k), dict):
            cfg[k] = {**cfg[k], **v}
        else:
            cfg[k] = v
    path = folder / "live.toml"
    path.write_text(tomli_w.dumps(cfg), encoding="utf-8")
    return path


def errors(capsys) -> str:
    return capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# the file
# ---------------------------------------------------------------------------------------------
def test_the_documented_example_is_valid():
    cfg = load_live_config(EXAMPLE)
    assert cfg.spec.modbus is not None and cfg.spec.home_assistant is not None and cfg.house.battery is not None
    assert cfg.safety_limits().republish_s == 900 and cfg.spec.clock == "emulator"


@pytest.mark.service
@pytest.mark.slow
def test_the_documented_example_runs_as_is_against_pems_emulate(broker, tmp_path):
    """docs/live-example.toml with only the two ports moved (this test's broker and Modbus server
    are on free ports): the loop follows the emulated reference home of the winter week, controls
    it, and hands it back."""
    import re

    from pems.live.emulator import Emulator
    from pems.scenarios.runner import prepare
    from pems.scenarios.spec import load_scenario

    prep = prepare(load_scenario("winter-week"))
    emu = Emulator(prep, broker.host, broker.port, modbus_port=0, speed=400.0, hours=4.0, mqtt_options=FAST)
    emu.start()
    try:
        text = EXAMPLE.read_text(encoding="utf-8")
        moved = re.sub(r"^port = 1883", f"port = {broker.port}", text, flags=re.M)
        moved = re.sub(r"^port = 5020", f"port = {emu.modbus_port}", moved, flags=re.M)
        changed = [a for a, b in zip(text.splitlines(), moved.splitlines()) if a != b]
        assert len(changed) == 2 and all(line.startswith("port = ") for line in changed)
        (tmp_path / "live.toml").write_text(moved, encoding="utf-8")
        rc = main(["live", "--config", str(tmp_path / "live.toml"), "--hours", "2"])
    finally:
        emu.stop()
    assert rc == 0
    from pems.paths import logs_dir

    evs = read_events(logs_dir("live") / "events.jsonl")
    steps = [e for e in evs if e["kind"] == "step"]
    assert len(steps) >= 4 and steps[-1]["state"] == "active"
    assert any(e["kind"] == "stop" and e["handback"] for e in evs)


@pytest.mark.parametrize(("keys", "where", "what"), [
    ({"mqtt": {"port": 70000}}, "mqtt.port", "65535"),
    ({"inner_seconds": 7}, "live.toml", "must divide"),
    ({"controller": "magic"}, "controller", "mpc"),
    ({"safety": {"stale_after": 10}}, "safety.stale_after", "unknown key"),
    ({"mqtt": {"credentials_file": "nope.env"}}, "mqtt.credentials_file", "not found"),
    ({"comfort": {"rooms": {"kitchen": {"low": 21, "high": 24}}}}, "comfort.rooms.kitchen", "no room"),
    ({"mpc": {"horizon_hours": 30}, "forecast": {"horizon_hours": 24}}, "live.toml", "shorter than the MPC"),
])
def test_a_bad_config_names_the_file_and_the_key_and_exits_2(tmp_path, capsys, keys, where, what):
    path = write_config(tmp_path, **keys)
    assert main(["live", "--config", str(path)]) == 2
    err = errors(capsys)
    assert str(path) in err and where in err and what in err
    assert "Traceback" not in err


CAR = {"id": "car", "capacity_kwh": 40.0}


@pytest.mark.parametrize(("evcc", "where", "what"), [
    (None, "evcc", "loadpoints = {car = 1}"),
    ({"loadpoints": {"car": 1, "van": 2}}, "evcc.loadpoints.van", "no car 'van'"),
    ({"loadpoints": {"car": 0}}, "evcc.loadpoints.car", "greater than or equal to 1"),
    ({"loadpoints": {"car": 1}, "handback_mode": "now"}, "evcc.handback_mode", "'pv' or 'minpv'"),
])
def test_a_house_with_a_car_needs_its_evcc_loadpoint(tmp_path, capsys, evcc, where, what):
    path = write_config(tmp_path, **({"evcc": evcc} if evcc else {}))
    (tmp_path / "house.toml").write_text(tomli_w.dumps({**BATTERY_HOUSE, "ev": [CAR]}), encoding="utf-8")
    assert main(["live", "--config", str(path)]) == 2
    err = errors(capsys)
    assert str(path) in err and where in err and what in err, err
    assert "Traceback" not in err


def test_the_live_config_changes_a_cars_week_and_target_and_its_plan_follows(tmp_path, capsys):
    """``[ev.<car>]``: a calendar of the coming trips (a job of the home's keeps it) and the target
    replace the house file's for the loop's forecast: the car is away when the calendar says, and its
    departure asks for the new target."""
    from pems.twin.model import build_model

    (tmp_path / "trips.csv").write_text("time_out,time_back,drive_kwh\n2024-01-10 13:00,2024-01-10 18:00,20\n")
    path = write_config(tmp_path, evcc={"loadpoints": {"car": 1}},
                        ev={"car": {"calendar": "trips.csv", "target_soc": 0.9}})
    (tmp_path / "house.toml").write_text(tomli_w.dumps({**BATTERY_HOUSE, "ev": [CAR]}), encoding="utf-8")
    cfg = load_live_config(path)
    car = cfg.house.ev[0]
    assert car.target_soc == 0.9 and Path(car.calendar) == tmp_path / "trips.csv"
    model = build_model(cfg.house)
    f = LiveForecast(cfg, model.sym.d.names)(pd.Timestamp("2024-01-10T06:00Z"))
    plugged, need = f.column("ev_plugged__car"), f.column("ev_need_wh__car")
    away = (f.index >= pd.Timestamp("2024-01-10T12:00Z")) & (f.index < pd.Timestamp("2024-01-10T17:00Z"))  # CET
    assert np.all(plugged[away] == 0) and np.all(plugged[~away] == 1)
    assert need[f.index == pd.Timestamp("2024-01-10T12:00Z")][0] == pytest.approx(0.9 * 40_000)
    # a car the house does not have, and a calendar that is not there: exit 2, the key named
    for ev, key in (({"van": {"target_soc": 0.5}}, "ev.van"), ({"car": {"calendar": "none.csv"}}, "ev.car.calendar")):
        path = write_config(tmp_path, evcc={"loadpoints": {"car": 1}}, ev=ev)
        (tmp_path / "house.toml").write_text(tomli_w.dumps({**BATTERY_HOUSE, "ev": [CAR]}), encoding="utf-8")
        assert main(["live", "--config", str(path)]) == 2
        err = errors(capsys)
        assert key in err and "Traceback" not in err, err


def test_a_cars_calendar_in_a_house_file_is_found_beside_it(tmp_path):
    """A house file's calendar path is relative to the house file, wherever the scenario is."""
    from helpers import write_scenario

    from pems.scenarios.spec import load_scenario

    (tmp_path / "homes").mkdir()
    (tmp_path / "homes" / "trips.csv").write_text("time_out,time_back\n2024-01-10 08:00,2024-01-10 16:00\n")
    (tmp_path / "homes" / "house.toml").write_text(
        tomli_w.dumps({**BATTERY_HOUSE, "ev": [{**CAR, "calendar": "trips.csv"}]}), encoding="utf-8")
    sc = write_scenario(tmp_path, BATTERY_HOUSE, weather="greensboro-tmy3", load="h25")
    sc.write_text(sc.read_text().replace('house = "house.toml"', 'house = "homes/house.toml"'))
    assert Path(load_scenario(sc).house.ev[0].calendar) == tmp_path / "homes" / "trips.csv"


def test_a_password_in_the_file_is_refused_without_repeating_it(tmp_path, capsys):
    path = write_config(tmp_path, mqtt={"username": "pems", "password": "hunter2-secret"})
    assert main(["live", "--config", str(path)]) == 2
    err = errors(capsys)
    assert "PEMS_MQTT_PASSWORD" in err and "hunter2-secret" not in err


def test_emulator_flags_beside_a_config_are_refused(tmp_path, capsys):
    path = write_config(tmp_path)
    for flag in (["--mqtt", "127.0.0.1:1883"], ["--controller", "rule-based"], ["--speed", "60"]):
        assert main(["live", "--config", str(path), *flag]) == 2
        err = errors(capsys)
        assert flag[0] in err and "configuration file" in err


def test_a_missing_config_and_a_house_without_battery_under_modbus(tmp_path, capsys):
    assert main(["live", "--config", str(tmp_path / "none.toml")]) == 2
    assert "file not found" in errors(capsys)
    path = write_config(tmp_path, modbus={"host": "127.0.0.1"})
    no_battery = {k: v for k, v in BATTERY_HOUSE.items() if k != "battery"}
    (tmp_path / "house.toml").write_text(tomli_w.dumps(no_battery), encoding="utf-8")
    assert main(["live", "--config", str(path)]) == 2
    assert "no battery" in errors(capsys)


# ---------------------------------------------------------------------------------------------
# forecasts
# ---------------------------------------------------------------------------------------------
def test_live_forecast_is_the_scenario_table_from_now_and_rereads_a_changed_csv(tmp_path):
    from pems.scenarios.comfort import comfort_bands
    from pems.twin.inputs import build_inputs
    from pems.twin.model import build_model

    idx = pd.date_range("2024-01-09", "2024-01-10T23:00", freq="h", tz="UTC")  # day-ahead: ends tonight
    prices = tmp_path / "prices.csv"
    pd.DataFrame({"time": idx, "price_import": 0.10, "price_export": 0.02}).to_csv(prices, index=False)
    cfg = load_live_config(write_config(tmp_path, forecast={"prices": "prices.csv", "horizon_hours": 24}))
    model = build_model(cfg.house)
    fc = LiveForecast(cfg, model.sym.d.names)
    t = pd.Timestamp("2024-01-10T10:07:30Z")
    f = fc(t)
    assert len(f.index) == 96 and f.index[0] == pd.Timestamp("2024-01-10T10:00Z")
    ref = build_inputs(cfg.house, fc.input_spec, f.index[0], 96, cfg.step, required_steps=1)
    np.testing.assert_allclose(f.d, ref[list(model.sym.d.names)].to_numpy(), rtol=1e-9, atol=1e-9)
    low, _ = comfort_bands(cfg.spec.comfort, cfg.house, f.index)
    np.testing.assert_allclose(f.low, low.to_numpy())
    assert np.allclose(f.price_import, 0.10)  # beyond tonight the last day repeats
    assert fc(t + pd.Timedelta(hours=3)).index[0] == pd.Timestamp("2024-01-10T13:00Z")
    # a fetcher of the user's refreshes the prices: the next step sees them
    pd.DataFrame({"time": idx, "price_import": 0.50, "price_export": 0.02}).to_csv(prices, index=False)
    assert np.allclose(fc(t + pd.Timedelta(hours=3)).price_import, 0.50)
    with pytest.raises(InputError, match="prices"):  # a source that does not cover now: the loop's solver fault
        fc(pd.Timestamp("2024-01-11T06:00Z"))


# ---------------------------------------------------------------------------------------------
# end to end, against the emulator in this process
# ---------------------------------------------------------------------------------------------
def run_against_emulator(prep, broker, tmp_path: Path, *extra: str, hours: float = 1.5,
                         **keys) -> tuple[int, object, Path]:
    from pems.live.emulator import Emulator

    emu = Emulator(prep, broker.host, broker.port, modbus_port=0, speed=400.0, hours=hours + 1.5,
                   mqtt_options=FAST)
    emu.start()  # returns once the broker holds its running clock (not a previous test's, stopped)
    keys.setdefault("state_dir", "state")  # (beside the config: where these tests look)
    keys.setdefault("events", "events.jsonl")
    keys = {k: v for k, v in keys.items() if v is not None}  # None: the default folders
    try:
        path = write_config(tmp_path, clock="emulator", mqtt={"port": broker.port},
                            modbus={"host": "127.0.0.1", "port": emu.modbus_port, "timeout_s": 1.0}, **keys)
        rc = main(["live", "--config", str(path), "--hours", str(hours), *extra])
    finally:
        emu.stop()
    return rc, emu, tmp_path / "events.jsonl"


@pytest.mark.service
def test_as_a_service_the_loop_writes_in_its_state_directory_and_nowhere_else(prep, broker, tmp_path, monkeypatch):
    """systemd's ``StateDirectory=`` and ``CacheDirectory=`` and a config that names no folder: the
    state and the event log go to the state directory, matplotlib's font cache to the cache one;
    nothing beside the config, in the working folder, in the home folder or in XDG's folders."""
    svc, cache, etc, cwd, home = (tmp_path / d for d in ("var-lib-pems", "var-cache-pems", "etc-pems", "cwd", "home"))
    for d in (svc, cache, etc, cwd, home):
        d.mkdir()
    monkeypatch.setenv("STATE_DIRECTORY", str(svc))
    monkeypatch.setenv("CACHE_DIRECTORY", str(cache))
    monkeypatch.delenv("MPLCONFIGDIR", raising=False)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg-state"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg-data"))
    monkeypatch.chdir(cwd)
    rc, _, _ = run_against_emulator(prep, broker, etc, hours=0.5, state_dir=None, events=None)
    assert rc == 0
    assert {"events.jsonl", "state.json", "state.lock"} <= {p.name for p in svc.iterdir()}
    assert any(json.loads(x)["kind"] == "step" for x in (svc / "events.jsonl").read_text().splitlines())
    assert sorted(p.name for p in etc.iterdir()) == ["house.toml", "live.toml"]
    assert list(cwd.iterdir()) == [] and list(home.iterdir()) == []
    assert not (tmp_path / "xdg-state").exists() and not (tmp_path / "xdg-data").exists()


def read_events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.service
@pytest.mark.slow
def test_live_config_runs_the_home_over_mqtt_and_modbus_and_hands_it_back(prep, broker, tmp_path):
    """With the home's learned load forecaster (seeded by a month of history) in the forecast."""
    from helpers import home_history, house_from

    from pems.controllers.forecast.load import LoadForecaster
    from pems.controllers.forecast.registry import ModelRegistry

    hist = home_history(house_from(BATTERY_HOUSE), "2023-12-10", 31, seed=2)  # up to the emulator's start
    hist.to_parquet(tmp_path / "history.parquet")
    ref = ModelRegistry(tmp_path / "models").register(LoadForecaster("Europe/Prague", "CZ").fit(hist), "load").ref
    from test_loxone import Sniffer

    sniff = Sniffer(broker.host, broker.port)  # Home Assistant's side of the broker
    rc, emu, ev_path = run_against_emulator(prep, broker, tmp_path, registry="models",
                                            forecast={"learned": ["load"], "history": "history.parquet"},
                                            home_assistant={"name": "trial home"})
    end = time.monotonic() + 5
    while time.monotonic() < end and not any(t == "pems/trial_home/availability" and p == b"offline"
                                              for t, p, _ in sniff.messages):
        time.sleep(0.05)
    sniff.close()
    assert rc == 0
    # Home Assistant saw the home: a discovery config per sensor, a state per step, then offline
    configs = {t: json.loads(p) for t, p, _ in sniff.messages if t.startswith("homeassistant/sensor/pems_trial_home/")}
    assert {c["value_template"] for c in configs.values()} >= {"{{ value_json.T_room__a }}", "{{ value_json.E_import }}",
                                                                "{{ value_json.soc }}"}
    states = [json.loads(p) for t, p, _ in sniff.messages if t == "pems/trial_home/state"]
    assert len(states) == 6 and states[-1]["state"] == "active" and states[-1]["E_import"] >= states[0]["E_import"]
    # the bill at the prices planned with: the two-rate tariff's, in its currency
    money = next(c for c in configs.values() if c.get("device_class") == "monetary")
    assert money["unit_of_measurement"] == "EUR" and money["state_class"] == "total"
    assert "cost" in states[-1] and states[-1]["cost"] > 0
    assert [p for t, p, _ in sniff.messages if t == "pems/trial_home/availability"][-1] == b"offline"
    evs = read_events(ev_path)
    steps = [e for e in evs if e["kind"] == "step"]
    assert len(steps) == 6 and all(e["state"] == "active" and e["solver_ok"] for e in steps)
    assert all(e["forecast"] == {"load": ref} for e in steps)
    assert [e["source"] for e in evs if e["kind"] == "forecast_source"] == [ref]
    # the loop kept what the inverter metered, step by step, for the forecaster's next lags:
    # the emulated household's load (its H25 profile), not the heating the loop switched
    kept = pd.read_parquet(tmp_path / "state" / "history.parquet")
    measured = kept.loc[kept.index >= pd.Timestamp("2024-01-10T00:00Z"), "P_load"].dropna()
    truth = prep.inputs["P_load"].reindex(measured.index)
    assert len(measured) >= 4
    # within what relay latency leaves: at 400× a tenth of a second between the loop's command and
    # the relay is 40 s of a kW heater in the step's metered load (the heaters here: 2 and 1.2 kW)
    np.testing.assert_allclose(measured, truth, rtol=0.0, atol=150.0)
    assert not [e for e in evs if e["kind"] == "fallback"]
    sent = [e for e in evs if e["kind"] == "command" and e["sent"]]
    assert {e["device"] for e in sent} == {"loxone", "growatt"}
    assert emu.stats.commands > 0 and emu.stats.register_writes > 0
    # closing handed the rooms back to their thermostats and the inverter to its own logic
    last = [e for e in evs if e["kind"] == "command" and e["fallback"]]
    assert any(e["target"].endswith("mode") or "mode" in e["target"] for e in last if e["device"] == "loxone")
    assert (tmp_path / "state").is_dir()


@pytest.mark.service
@pytest.mark.slow
def test_live_config_dry_run_sends_nothing_and_never_prints_credentials(prep, broker, tmp_path, capfd,
                                                                        caplog, monkeypatch):
    import logging

    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("PEMS_MQTT_USERNAME", "pems")
    monkeypatch.setenv("PEMS_MQTT_PASSWORD", "s3cret-not-for-logs")
    rc, emu, ev_path = run_against_emulator(prep, broker, tmp_path, "--dry-run", hours=1.0)
    assert rc == 0
    out = capfd.readouterr()
    assert "s3cret-not-for-logs" not in out.out + out.err + caplog.text and "dry run" in out.out
    assert "step 2024-01-10" in caplog.text  # the loop did log (at INFO) while it ran
    assert not ev_path.exists()  # a dry run keeps its own log beside the real one
    evs = read_events(ev_path.with_name("events.dry-run.jsonl"))
    assert len([e for e in evs if e["kind"] == "step"]) == 4
    commands = [e for e in evs if e["kind"] == "command"]
    assert commands and not any(e["sent"] for e in commands)
    assert all("dry-run" in e["reason"] for e in commands)
    assert emu.stats.commands == 0 and emu.stats.register_writes == 0
    assert (tmp_path / "state" / "dry-run").is_dir()  # a real run never resumes a dry run's state


@pytest.mark.service
@pytest.mark.slow
def test_the_loop_falls_back_when_the_emulator_it_follows_stops(prep, broker, tmp_path):
    """``pems emulate`` stopped under a running loop (its clock says ``running: false``): the loop falls
    back on the clock fault within a tick, instead of stepping on with a clock of its own, and says at
    exit (code 3) that the inverter, gone with the emulator, could not be handed back."""
    import threading

    from pems.live.emulator import Emulator

    emu = Emulator(prep, broker.host, broker.port, modbus_port=0, speed=400.0, hours=4.0, mqtt_options=FAST)
    emu.start()
    t_stop = prep.scenario.start + pd.Timedelta(minutes=40)
    stopper = threading.Thread(target=lambda: (emu.wait_until(t_stop, timeout=60), emu.stop()), daemon=True)
    stopper.start()
    try:
        path = write_config(tmp_path, clock="emulator", mqtt={"port": broker.port}, state_dir="state",
                            events="events.jsonl", modbus={"host": "127.0.0.1", "port": emu.modbus_port, "timeout_s": 1.0})
        rc = main(["live", "--config", str(path), "--hours", "1.5"])
    finally:
        emu.stop()
        stopper.join(5)
    evs = read_events(tmp_path / "events.jsonl")
    fb = [e for e in evs if e["kind"] == "fallback"]
    assert fb and any("clock: the emulator has stopped" in r for r in fb[0]["reasons"]), fb
    assert t_stop <= pd.Timestamp(fb[0]["time"]) <= t_stop + pd.Timedelta(minutes=3)
    assert all(e["state"] == "fallback" for e in evs if e["kind"] == "step" and pd.Timestamp(e["time"]) >= t_stop)
    stop = [e for e in evs if e["kind"] == "stop"][-1]
    assert stop["handback"]["inverter"].startswith("not sent") and rc == 3


def test_mpc_with_correctors_takes_the_registry_champion_learned_for_this_house(tmp_path, capsys):
    from pems.controllers.forecast.correctors import ResidualCorrector
    from pems.controllers.forecast.registry import ModelRegistry
    from pems.twin.house import House, load_house
    from pems.twin.model import build_model

    path = write_config(tmp_path, controller="mpc+correctors", registry="models")
    assert main(["live", "--config", str(path)]) == 2
    err = errors(capsys)
    assert "registry" in err and "no champion corrector" in err
    # a corrector learned for another house is refused
    other = House.model_validate({**BATTERY_HOUSE, "rooms": [{**BATTERY_HOUSE["rooms"][1], "id": "c"}]})
    reg = ModelRegistry(tmp_path / "models")
    reg.register(ResidualCorrector(build_model(other), pd.Timedelta(minutes=15)), "corrector", "elsewhere")
    assert main(["live", "--config", str(path)]) == 2
    assert "learned for rooms c" in errors(capsys)
    # one learned for this house, promoted: taken
    here = load_house(tmp_path / "house.toml")
    card = reg.register(ResidualCorrector(build_model(here), pd.Timedelta(minutes=15)), "corrector", "here")
    reg.promote(card.ref)
    assert load_live_config(path).champion_corrector().model.rooms == ("a", "b")
