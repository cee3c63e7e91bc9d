"""Home Assistant: the live home's states over MQTT, with discovery (no YAML on the Home Assistant side).

Home Assistant's MQTT integration creates an entity for every retained config message under
``<prefix>/<component>/<node_id>/<object_id>/config`` (the discovery prefix is ``homeassistant``
by default). PEMS publishes one such message per sensor, all of one device (the home), then each
control step one JSON state message that every sensor reads its value from (``value_template``),
and the controller's plan as the attributes of a ``plan`` sensor. An availability topic says
``online`` while PEMS runs; the broker says ``offline`` for it (the last will) when it vanishes.
When Home Assistant restarts it announces ``online`` on ``<prefix>/status``: the configs are
published again then, as they are on every reconnection.

What Home Assistant accepts is checked by :func:`sensor_problems` (the keys of an MQTT sensor, the
device classes, the state classes each allows and their units, after Home Assistant's
``homeassistant/components/sensor/const.py`` and ``components/mqtt/sensor.py``); the tests hold every
message PEMS publishes to it.

Energy totals (``total_increasing``) are integrated here from the step means; they start at zero
with each run, which Home Assistant's statistics read as a new meter cycle, not as negative energy.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from pems.live.mqtt import MqttEndpoint

log = logging.getLogger(__name__)

#: The keys of an MQTT sensor's discovery config that PEMS uses (all are Home Assistant's own).
SENSOR_KEYS = frozenset({
    "name", "unique_id", "object_id", "default_entity_id", "state_topic", "value_template", "device_class",
    "state_class", "unit_of_measurement", "suggested_display_precision", "json_attributes_topic",
    "json_attributes_template", "availability_topic", "payload_available", "payload_not_available",
    "device", "origin", "icon", "entity_category", "enabled_by_default", "expire_after", "force_update",
    "options", "platform", "qos", "encoding", "availability", "availability_mode", "last_reset_value_template",
})
#: Sensor device classes and the units Home Assistant accepts for each (None: any or none).
DEVICE_CLASS_UNITS: dict[str, frozenset[str] | None] = {
    "temperature": frozenset({"°C", "°F", "K"}),
    "power": frozenset({"mW", "W", "kW", "MW", "GW", "TW", "BTU/h"}),
    "energy": frozenset({"J", "kJ", "MJ", "GJ", "mWh", "Wh", "kWh", "MWh", "GWh", "TWh", "cal", "kcal", "Mcal",
                         "Gcal"}),
    "battery": frozenset({"%"}),
    "monetary": None,  # an ISO 4217 currency code (checked below)
    "enum": frozenset(),  # no unit
    "timestamp": frozenset(),
    "duration": frozenset({"d", "h", "min", "s", "ms", "µs"}),
    "irradiance": frozenset({"W/m²", "BTU/(h⋅ft²)"}),
    "humidity": frozenset({"%"}),
}
#: State classes each device class allows (Home Assistant's DEVICE_CLASS_STATE_CLASSES).
DEVICE_CLASS_STATE_CLASSES: dict[str, frozenset[str | None]] = {
    "temperature": frozenset({"measurement", None}),
    "power": frozenset({"measurement", None}),
    "energy": frozenset({"total", "total_increasing", None}),
    "battery": frozenset({"measurement", None}),
    "monetary": frozenset({"total", None}),
    "enum": frozenset({None}),
    "timestamp": frozenset({None}),
    "duration": frozenset({"measurement", "total", "total_increasing", None}),
    "irradiance": frozenset({"measurement", None}),
    "humidity": frozenset({"measurement", None}),
}
STATE_CLASSES = frozenset({"measurement", "total", "total_increasing"})
_ID = re.compile(r"^[a-zA-Z0-9_-]+$")


def sensor_problems(topic: str, config: dict[str, Any], prefix: str = "homeassistant") -> list[str]:
    """What Home Assistant would refuse or misread in one sensor's discovery ``config`` published on
    ``topic`` (empty: nothing)."""
    out = []
    parts = topic.split("/")
    if len(parts) not in (4, 5) or parts[0] != prefix or parts[1] != "sensor" or parts[-1] != "config" \
            or not all(_ID.match(p) for p in parts[2:-1]):
        out.append(f"topic {topic!r} is not {prefix}/sensor/[<node_id>/]<object_id>/config")
    unknown = set(config) - SENSOR_KEYS
    if unknown:
        out.append(f"unknown keys {sorted(unknown)}")
    if not isinstance(config.get("state_topic"), str) or not config.get("state_topic"):
        out.append("no state_topic")
    if "unique_id" not in config:
        out.append("no unique_id (needed for a device and for editing in the UI)")
    dc, sc, unit = config.get("device_class"), config.get("state_class"), config.get("unit_of_measurement")
    if sc is not None and sc not in STATE_CLASSES:
        out.append(f"state_class {sc!r} is not one of {sorted(STATE_CLASSES)}")
    if dc is not None:
        if dc not in DEVICE_CLASS_UNITS:
            out.append(f"device_class {dc!r} is not one PEMS knows Home Assistant to accept")
        else:
            units = DEVICE_CLASS_UNITS[dc]
            if dc == "monetary":
                if not (isinstance(unit, str) and re.fullmatch(r"[A-Z]{3}", unit)):
                    out.append(f"monetary needs an ISO 4217 currency as its unit, not {unit!r}")
            elif units is not None and (unit or None) not in (units or {None}):
                out.append(f"unit {unit!r} is not one device_class {dc!r} accepts ({sorted(units) or 'none'})")
            if sc not in DEVICE_CLASS_STATE_CLASSES[dc]:
                out.append(f"device_class {dc!r} does not allow state_class {sc!r}")
            if dc == "enum" and not config.get("options"):
                out.append("device_class enum needs its options")
    dev = config.get("device")
    if not isinstance(dev, dict) or not dev.get("identifiers"):
        out.append("no device with identifiers")
    return out


@dataclass(frozen=True)
class Sensor:
    """One Home Assistant sensor: ``key`` in the state message, how Home Assistant shows it."""

    key: str
    name: str
    device_class: str | None = None
    state_class: str | None = None
    unit: str | None = None
    precision: int | None = None
    icon: str | None = None
    options: tuple[str, ...] = ()


#: What the loop's state can be (the ``state`` sensor's options).
LOOP_STATES = ("starting", "active", "fallback", "handed_back")


#: What a car's plug can be (its ``ev_plugged__<car>`` sensor's options).
PLUG_STATES = ("plugged", "away")


def sensors(rooms: tuple[str, ...] | list[str], has_battery: bool, currency: str | None = None,
            cars: tuple[str, ...] | list[str] = ()) -> list[Sensor]:
    """The sensors of one home: every room's temperature and heating, the house's powers, the
    battery, every car's state of charge, plug, charging power and energy, energy totals, the grid
    bill so far (with a currency), the loop's state and its plan."""
    out = []
    for r in rooms:
        out.append(Sensor(f"T_room__{r}", f"{r} temperature", "temperature", "measurement", "°C", 1))
        out.append(Sensor(f"P_heat__{r}", f"{r} heating", "power", "measurement", "W", 0))
    out += [
        Sensor("T_out", "outdoor temperature", "temperature", "measurement", "°C", 1),
        Sensor("P_pv", "PV power", "power", "measurement", "W", 0),
        Sensor("P_load", "household load", "power", "measurement", "W", 0),
        Sensor("P_grid", "grid power (import positive)", "power", "measurement", "W", 0),
        Sensor("P_heat", "heating power", "power", "measurement", "W", 0),
        Sensor("E_import", "grid import", "energy", "total_increasing", "kWh", 3),
        Sensor("E_export", "grid export", "energy", "total_increasing", "kWh", 3),
        Sensor("E_pv", "PV energy", "energy", "total_increasing", "kWh", 3),
        Sensor("E_heat", "heating energy", "energy", "total_increasing", "kWh", 3),
    ]
    if has_battery:
        out += [Sensor("P_bat", "battery power (charge positive)", "power", "measurement", "W", 0),
                Sensor("soc", "battery state of charge", "battery", "measurement", "%", 0)]
    for c in cars:  # (a state of charge the car does not report, away or evcc offline, is null: unknown)
        out += [Sensor(f"ev_soc__{c}", f"{c} state of charge", "battery", "measurement", "%", 0),
                Sensor(f"ev_plugged__{c}", f"{c} plugged in", "enum", None, None, None, "mdi:ev-plug-type2",
                       PLUG_STATES),
                Sensor(f"P_ev__{c}", f"{c} charging", "power", "measurement", "W", 0),
                Sensor(f"E_ev__{c}", f"{c} charging energy", "energy", "total_increasing", "kWh", 3)]
    if currency:
        out.append(Sensor("cost", "grid bill since start", "monetary", "total", currency, 2))
    out += [Sensor("state", "PEMS state", "enum", None, None, None, "mdi:home-lightning-bolt", LOOP_STATES),
            Sensor("plan_heat", "planned heating, next step", "power", "measurement", "W", 0, "mdi:chart-timeline")]
    return out


def discovery(house: str, sensor_list: list[Sensor], prefix: str = "homeassistant", base: str | None = None,
              version: str = "") -> dict[str, dict[str, Any]]:
    """Discovery config per topic for ``sensor_list`` of the home named ``house``.

    ``base``: the topic under which PEMS publishes the home's ``state``, ``plan`` and
    ``availability`` (default ``pems/<house id>``)."""
    node = _slug(house)
    base = base or f"pems/{node}"
    device = {"identifiers": [f"pems_{node}"], "name": f"PEMS {house}", "manufacturer": "PEMS",
              "model": "home energy management (economic MPC)", "sw_version": version or None}
    device = {k: v for k, v in device.items() if v is not None}
    out = {}
    for s in sensor_list:
        obj = _slug(s.key)
        cfg: dict[str, Any] = {
            "name": s.name, "unique_id": f"pems_{node}_{obj}", "default_entity_id": f"sensor.pems_{node}_{obj}",
            "state_topic": f"{base}/state", "value_template": f"{{{{ value_json.{s.key} }}}}",
            "availability_topic": f"{base}/availability", "device": device,
            "origin": {"name": "PEMS"},
        }
        for k, v in (("device_class", s.device_class), ("state_class", s.state_class),
                     ("unit_of_measurement", s.unit), ("suggested_display_precision", s.precision),
                     ("icon", s.icon)):
            if v is not None:
                cfg[k] = v
        if s.options:
            cfg["options"] = list(s.options)
        if s.key == "plan_heat":  # the whole plan as attributes
            cfg["json_attributes_topic"] = f"{base}/plan"
        out[f"{prefix}/sensor/pems_{node}/{obj}/config"] = cfg
    return out


def _slug(text: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_-]+", "_", text).strip("_").lower() or "home"


class HomeAssistant(MqttEndpoint):
    """Publishes the home to Home Assistant (see the module notes): the loop calls :meth:`observed`
    once per control step.

    Parameters
    ----------
    host, port, **mqtt
        The broker (usually the one the home's rooms are on) and :class:`MqttEndpoint` options.
    house
        The home's name (its device in Home Assistant).
    rooms, has_battery, cars
        What the home has.
    currency
        The prices' currency (ISO 4217): with it, the grid bill so far is published.
    price
        ``time → (import, export) price [currency per kWh]`` of the step starting then, or None when
        not known; the live loop gives its own (the prices its forecast had for each step).
    prefix
        Home Assistant's discovery prefix.
    """

    _id_prefix = "pems-ha"

    def __init__(self, host: str, port: int = 1883, *, house: str, rooms: tuple[str, ...] | list[str],
                 has_battery: bool, currency: str | None = None, price: Any = None,
                 prefix: str = "homeassistant", version: str = "", cars: tuple[str, ...] | list[str] = (),
                 **mqtt: Any) -> None:
        self.prefix = prefix
        self.node = _slug(house)
        self.base = f"pems/{self.node}"
        self.rooms = list(rooms)
        self.cars = list(cars)
        self.sensors = sensors(rooms, has_battery, currency, self.cars)
        self.configs = discovery(house, self.sensors, prefix, self.base, version)
        self.price = price
        self.totals = {"E_import": 0.0, "E_export": 0.0, "E_pv": 0.0, "E_heat": 0.0, "cost": 0.0,
                       **{f"E_ev__{c}": 0.0 for c in self.cars}}
        self.state = "starting"
        self.published = 0  # state messages sent
        super().__init__(host, port, will=(f"{self.base}/availability", "offline", 1, True), **mqtt)

    # MqttEndpoint hooks
    def _subscriptions(self) -> list[tuple[str, int]]:
        return [(f"{self.prefix}/status", 1)]

    def _handle(self, topic: str, payload: bytes, retained: bool) -> None:
        if topic == f"{self.prefix}/status" and payload.strip() == b"online" and not retained:
            client = self._client
            if client is not None:
                self._announce(client)  # Home Assistant restarted: it forgot non-retained configs

    def _on_connected(self, client: Any) -> None:
        self._announce(client)

    def _before_close(self, client: Any) -> None:
        # delivered before the disconnect (retained: what Home Assistant finds later too); at most
        # two seconds when the broker is gone (the home was handed back before this)
        info = client.publish(f"{self.base}/availability", "offline", qos=1, retain=True)
        try:
            info.wait_for_publish(2.0)
        except (RuntimeError, ValueError):  # not connected: the last will says it instead
            pass

    def _announce(self, client: Any) -> None:
        for topic, cfg in self.configs.items():
            client.publish(topic, json.dumps(cfg), qos=1, retain=True)
        client.publish(f"{self.base}/availability", "online", qos=1, retain=True)

    # what the loop tells it
    def observed(self, time: pd.Timestamp, T_room: np.ndarray, T_out: float, P_pv: float, P_load: float,
                 P_grid: float, P_bat: float, soc: float | None, P_heat: np.ndarray | None, step_s: float,
                 state: str, plan: pd.DataFrame | None = None, ev_soc: np.ndarray | None = None,
                 ev_plugged: np.ndarray | None = None, P_ev: np.ndarray | None = None) -> dict[str, Any]:
        """Publish one step: the means of the step that just ended (powers), the readings at its end
        (temperatures, SOC, the cars' plugs and reported SOC); the energy totals and the bill grow by
        the step. Returns the state sent."""
        h = step_s / 3600.0
        heat = np.zeros(len(self.rooms)) if P_heat is None else np.asarray(P_heat, dtype=float)
        imp, exp = max(P_grid, 0.0), max(-P_grid, 0.0)
        self.totals["E_import"] += imp * h / 1000
        self.totals["E_export"] += exp * h / 1000
        self.totals["E_pv"] += max(P_pv, 0.0) * h / 1000
        self.totals["E_heat"] += float(heat.sum()) * h / 1000
        prices = self.price(time - pd.Timedelta(seconds=step_s)) if self.price is not None else None
        if prices is not None:
            p_imp, p_exp = prices
            self.totals["cost"] += (imp * p_imp - exp * p_exp) * h / 1000
        self.state = state if state in LOOP_STATES else "active"
        msg: dict[str, Any] = {f"T_room__{r}": round(float(v), 2) for r, v in zip(self.rooms, T_room)}
        msg |= {f"P_heat__{r}": round(float(v), 1) for r, v in zip(self.rooms, heat)}
        msg |= {"T_out": round(float(T_out), 2), "P_pv": round(P_pv, 1), "P_load": round(P_load, 1),
                "P_grid": round(P_grid, 1), "P_heat": round(float(heat.sum()), 1), "P_bat": round(P_bat, 1),
                "state": self.state, "time": time.isoformat()}
        if soc is not None:
            msg["soc"] = round(100 * soc, 1)
        for j, c in enumerate(self.cars):
            p = float(P_ev[j]) if P_ev is not None and j < len(P_ev) and np.isfinite(P_ev[j]) else 0.0
            self.totals[f"E_ev__{c}"] += max(p, 0.0) * h / 1000
            car_soc = float(ev_soc[j]) if ev_soc is not None and j < len(ev_soc) else float("nan")
            home = bool(ev_plugged[j]) if ev_plugged is not None and j < len(ev_plugged) else False
            msg |= {f"ev_soc__{c}": round(100 * car_soc, 1) if np.isfinite(car_soc) else None, f"P_ev__{c}": round(p, 1),
                    f"ev_plugged__{c}": PLUG_STATES[0] if home else PLUG_STATES[1]}
        msg |= {k: round(v, 4) for k, v in self.totals.items()}
        plan_msg = _plan_attributes(plan, self.rooms)
        msg["plan_heat"] = plan_msg.get("next_heat_w", 0.0) if plan_msg else 0.0
        client = self._client
        if client is not None and self.connected:
            client.publish(f"{self.base}/state", json.dumps(msg), qos=0, retain=True)
            if plan_msg:
                client.publish(f"{self.base}/plan", json.dumps(plan_msg), qos=0, retain=True)
            self.published += 1
        return msg


def _plan_attributes(plan: pd.DataFrame | None, rooms: list[str]) -> dict[str, Any]:
    """The plan as sensor attributes: hourly heating (total and per room) and battery power ahead.

    Hourly means by reshaping (the plan's steps are regular and divide the hour): a pandas resample
    costs the loop milliseconds a step."""
    if plan is None or len(plan) == 0:
        return {}
    heat_cols = [f"P_heat__{r}" for r in rooms if f"P_heat__{r}" in plan]
    if not heat_cols:
        return {}
    idx = pd.DatetimeIndex(plan.index)
    step_s = (idx[1] - idx[0]).total_seconds() if len(idx) > 1 else 3600.0
    per_hour = max(1, int(round(3600.0 / step_s)))
    n = len(idx) // per_hour * per_hour or len(idx)
    per_hour = min(per_hour, n)
    heat = plan[heat_cols].to_numpy(dtype=float)

    def hourly(a: np.ndarray) -> np.ndarray:
        return a[:n].reshape(n // per_hour, per_hour, *a.shape[1:]).mean(axis=1)

    h = hourly(heat)
    out: dict[str, Any] = {
        "next_heat_w": round(float(heat[0].sum()), 1),
        "hours": [t.isoformat() for t in idx[:n:per_hour]],
        "heat_w": np.round(h.sum(axis=1)).tolist(),
    }
    for j, c in enumerate(heat_cols):
        out[c] = np.round(h[:, j]).tolist()
    if "P_bat" in plan:
        out["battery_w"] = np.round(hourly(plan["P_bat"].to_numpy(dtype=float))).tolist()
    return out
