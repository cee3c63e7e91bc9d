"""Home Assistant: discovery messages Home Assistant accepts, and the home's states on a real broker."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from helpers import wait_for as _wait  # noqa: E402
from test_loxone import Sniffer  # noqa: E402

from pems.live.home_assistant import HomeAssistant, discovery, sensor_problems, sensors  # noqa: E402




def test_every_discovery_message_is_one_home_assistant_accepts():
    configs = discovery("Family Home", sensors(["obyvak", "koupelna dole"], True, "CZK", cars=["family car"]))
    assert configs
    for topic, cfg in configs.items():
        assert sensor_problems(topic, cfg) == [], (topic, cfg)
    by_class = {}
    for cfg in configs.values():
        by_class.setdefault(cfg.get("device_class"), set()).add((cfg.get("state_class"), cfg.get("unit_of_measurement")))
    assert by_class["energy"] == {("total_increasing", "kWh")}
    assert by_class["power"] == {("measurement", "W")}
    assert by_class["temperature"] == {("measurement", "°C")}
    assert by_class["monetary"] == {("total", "CZK")}
    assert by_class["battery"] == {("measurement", "%")}
    # one device, unique ids, topics without spaces
    assert len({json.dumps(c["device"], sort_keys=True) for c in configs.values()}) == 1
    assert len({c["unique_id"] for c in configs.values()}) == len(configs)
    assert all(" " not in t for t in configs)


@pytest.mark.parametrize("change, expected", [
    ({"state_class": "measurement"}, "does not allow state_class 'measurement'"),  # energy is a total
    ({"unit_of_measurement": "W"}, "unit 'W' is not one device_class 'energy' accepts"),
    ({"device_class": "energie"}, "device_class 'energie'"),
    ({"state_class": "totally"}, "state_class 'totally'"),
    ({"colour": "red"}, "unknown keys ['colour']"),
    ({"state_topic": None}, "no state_topic"),
])
def test_the_check_refuses_what_home_assistant_refuses(change, expected):
    topic, cfg = next((t, c) for t, c in discovery("h", sensors(["a"], False)).items() if c.get("device_class") == "energy")
    bad = {**cfg, **change}
    assert any(expected in p for p in sensor_problems(topic, bad)), sensor_problems(topic, bad)
    assert sensor_problems("homeassistant/sensor/has space/x/config", cfg)
    money = {**cfg, "device_class": "monetary", "state_class": "total", "unit_of_measurement": "Kč"}
    assert any("ISO 4217" in p for p in sensor_problems(topic, money))


@pytest.mark.service
def test_a_subscriber_on_the_broker_sees_the_home(broker):
    """Retained discovery configs and availability on connect; each step's state and plan; the
    configs again when Home Assistant announces itself; offline when PEMS closes."""
    sniff = Sniffer(broker.host, broker.port)
    prices = lambda t: (0.25, 0.05)  # noqa: E731 [currency/kWh]
    ha = HomeAssistant(broker.host, broker.port, house="two rooms", rooms=["a", "b"], has_battery=True,
                       currency="EUR", price=prices)
    try:
        ha.connect()
        n_cfg = len(ha.configs)
        assert _wait(lambda: sum(t.endswith("/config") for t in sniff.topics()) >= n_cfg)
        assert _wait(lambda: ("pems/two_rooms/availability", b"online", False) in sniff.messages)
        t0 = pd.Timestamp("2024-01-10T06:00Z")
        plan = pd.DataFrame({"P_heat__a": [1000.0] * 8, "P_heat__b": [0.0] * 8, "P_bat": [500.0] * 8},
                            index=pd.date_range(t0, periods=8, freq="15min"))
        for k in range(4):  # an hour at 2 kW import, 1 kW heating
            msg = ha.observed(t0 + pd.Timedelta(minutes=15 * k), np.array([21.0, 20.0]), 2.0, 0.0, 600.0, 2000.0,
                              400.0, 0.5, np.array([1000.0, 0.0]), 900.0, "active", plan)
        assert msg["E_import"] == pytest.approx(2.0) and msg["E_heat"] == pytest.approx(1.0)
        assert msg["cost"] == pytest.approx(0.5) and msg["soc"] == 50.0
        assert _wait(lambda: any(t == "pems/two_rooms/state" for t in sniff.topics()))
        states = [json.loads(p) for t, p, _ in sniff.messages if t == "pems/two_rooms/state"]
        assert _wait(lambda: len([1 for t in sniff.topics() if t == "pems/two_rooms/state"]) == 4)
        last = [json.loads(p) for t, p, _ in sniff.messages if t == "pems/two_rooms/state"][-1]
        assert last["T_room__a"] == 21.0 and last["state"] == "active" and states
        # every sensor's value_template finds its key in the state message
        for cfg in ha.configs.values():
            key = cfg["value_template"].split("value_json.")[1].split()[0]
            assert key in last, key
        plan_msgs = [json.loads(p) for t, p, _ in sniff.messages if t == "pems/two_rooms/plan"]
        assert plan_msgs[-1]["heat_w"] == [1000.0, 1000.0] and plan_msgs[-1]["battery_w"] == [500.0, 500.0]
        # Home Assistant restarts: it says so, PEMS publishes the configs again
        before = sum(t.endswith("/config") for t in sniff.topics())
        sniff.publish("homeassistant/status", "online")
        assert _wait(lambda: sum(t.endswith("/config") for t in sniff.topics()) >= before + n_cfg)
    finally:
        ha.close()
    assert _wait(lambda: sniff.messages[-1][:2] == ("pems/two_rooms/availability", b"offline"))
    sniff.close()


def test_the_cars_state_of_charge_plug_and_charging_energy():
    """A car's sensors: its reported SOC (unknown, JSON null, while away: the car says nothing), its plug,
    its charging power and the energy charged so far (growing by the step's mean power)."""
    ha = HomeAssistant("127.0.0.1", 1, house="h", rooms=["a"], has_battery=False, cars=["tesla"])
    keys = {c["value_template"].split("value_json.")[1].split()[0] for c in ha.configs.values()}
    assert {"ev_soc__tesla", "ev_plugged__tesla", "P_ev__tesla", "E_ev__tesla"} <= keys
    t0 = pd.Timestamp("2024-01-10T18:00Z")
    args = (np.array([21.0]), 2.0, 0.0, 500.0, 7500.0, 0.0, None, np.array([0.0]), 900.0, "active")
    for k in range(4):  # an hour charging at 7 kW
        msg = ha.observed(t0 + pd.Timedelta(minutes=15 * k), *args, ev_soc=np.array([0.40 + 0.02 * k]),
                          ev_plugged=np.array([True]), P_ev=np.array([7000.0]))
    assert msg["E_ev__tesla"] == pytest.approx(7.0) and msg["ev_soc__tesla"] == 46.0
    assert msg["ev_plugged__tesla"] == "plugged" and msg["P_ev__tesla"] == 7000.0
    msg = ha.observed(t0 + pd.Timedelta(hours=1), *args, ev_soc=np.array([np.nan]), ev_plugged=np.array([False]),
                      P_ev=np.array([0.0]))
    assert msg["ev_soc__tesla"] is None and msg["ev_plugged__tesla"] == "away" and msg["E_ev__tesla"] == pytest.approx(7.0)
    json.dumps(msg, allow_nan=False)  # what goes on the wire is JSON
