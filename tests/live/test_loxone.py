"""Loxone over MQTT: layouts and payloads, credentials, and the adapter against a real mosquitto.

The service tests start mosquitto (Debian package) on 127.0.0.1 on a free port; the emulator's side
(:class:`LoxoneHomeMqtt`) publishes like a Miniserver behind LoxBerry, and raw paho clients check
what really goes over the wire.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from pems.errors import InputError
from pems.live.devices import RoomBus
from pems.live.loxone import LoxoneMqtt, ValueStore
from pems.live.mqtt import (Credentials, MqttConnectError, TLSConfig,
                              credentials_from)
from pems.live.loxone_home import LoxoneHomeMqtt
from pems.live.topics import builtin_layouts, load_layout
from services import free_port, make_tls_files, mosquitto

ROOMS = ["obyvak", "kuchyne", "loznice"]
SECRET = "s3cr3t-Pa55-wørd"
FAST = {"reconnect_min_s": 0.1, "reconnect_max_s": 0.5, "connect_timeout_s": 5.0, "keepalive_s": 5}


def wait_until(predicate, timeout: float = 3.0, step: float = 0.02) -> bool:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


class Sniffer:
    """A raw paho client subscribed to ``#``: every message anyone publishes (retained ones too)."""

    def __init__(self, host: str, port: int, **kw) -> None:
        self.messages: list[tuple[str, bytes, bool]] = []
        self._lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"sniffer-{os.getpid()}")
        if kw.get("username"):
            self.client.username_pw_set(kw["username"], kw.get("password"))
        self.ready = threading.Event()
        self.client.on_connect = lambda c, u, f, rc, p: (c.subscribe("#", qos=1), None)
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self.ready.set()
        self.client.on_message = self._on_message
        self.client.connect(host, port, keepalive=10)
        self.client.loop_start()
        assert self.ready.wait(5), "sniffer did not subscribe"

    def _on_message(self, c, u, msg) -> None:
        with self._lock:
            self.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain)))

    def topics(self) -> list[str]:
        with self._lock:
            return [t for t, _, _ in self.messages]

    def publish(self, topic: str, payload: str | bytes, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def broker(tmp_path):
    with mosquitto(tmp_path) as b:
        yield b


@pytest.fixture
def home(broker):
    h = LoxoneHomeMqtt(broker.host, broker.port, ROOMS, **FAST)
    h.connect()
    yield h
    h.close()


@pytest.fixture
def loop(broker):
    lx = LoxoneMqtt(broker.host, broker.port, ROOMS, **FAST)
    lx.connect()
    yield lx
    lx.close()


# ---------------------------------------------------------------------------------------------
# layouts and payloads (no broker)
# ---------------------------------------------------------------------------------------------
def test_builtin_layout_renders_topics_per_room():
    assert "loxberry" in builtin_layouts()
    lay = load_layout("loxberry")
    assert lay.topic("temperature", "obyvak") == "loxone/room/obyvak/temperature"
    assert lay.topic("relay_set", "obyvak") == "loxone/room/obyvak/heating/set"
    assert lay.topic("outdoor") == "loxone/outdoor/temperature"
    assert lay.command.retain is False and lay.state.retain is True
    routes = lay.routes(ROOMS, ("temperature", "relay_state", "outdoor"))
    assert len(routes) == 2 * len(ROOMS) + 1
    assert routes["loxone/room/kuchyne/heating/state"] == ("relay_state", "kuchyne")
    renamed = lay.model_copy(update={"rooms": {"obyvak": "living"}})
    assert renamed.topic("temperature", "obyvak") == "loxone/room/living/temperature"
    with pytest.raises(ValueError):
        lay.topic("temperature")  # per room: needs the room


@pytest.mark.parametrize("text, key", [
    ('[topics]\ntemperature="t/{room}"\nrelay_state="r/{room}"\nrelay_set="s/{room}"\nmode_set="m/{room}"\n', "name"),
    ('name="x"\n[topics]\ntemperature="t/all"\nrelay_state="r/{room}"\nrelay_set="s/{room}"\nmode_set="m/{room}"\n',
     "topics"),
    ('name="x"\n[topics]\ntemperature="t/{room}/+"\nrelay_state="r/{room}"\nrelay_set="s/{room}"\nmode_set="m/{room}"\n',
     "topics.temperature"),
    ('name="x"\n[topics]\ntemperature="t/{room}"\nrelay_state="r/{room}"\nrelay_set="s/{room}"\nmode_set="m/{room}"\n'
     '[command]\nqos=3\n', "command.qos"),
    ('name="x"\n[topics]\ntemperature="t/{room}"\nrelay_state="r/{room}"\nrelay_set="s/{room}"\nmode_set="m/{room}"\n'
     'colour="red"\n', "topics.colour"),
    ('name="x"\n[topics]\ntemperature="t/{room}"\nrelay_state="r/{room}"\nrelay_set="s/{room}"\nmode_set="m/{room}"\n'
     '[payload]\non="1"\noff="1"\n', "payload"),
])
def test_bad_layout_file_names_file_and_key(tmp_path, text, key):
    f = tmp_path / "layout.toml"
    f.write_text(text)
    with pytest.raises(InputError) as err:
        load_layout(f)
    assert any(p.key == key and p.source == str(f) for p in err.value.problems), str(err.value)


def test_unknown_layout_and_broken_toml(tmp_path):
    with pytest.raises(InputError, match="unknown layout"):
        load_layout("no-such-layout")
    f = tmp_path / "broken.toml"
    f.write_text("name = \n")
    with pytest.raises(InputError, match="not valid TOML"):
        load_layout(f)


@pytest.mark.parametrize("payload, expected, problem", [
    (b"21.3", 21.3, False), (b" 21.3 ", 21.3, False), (b"21,3", 21.3, False), ("21.3°C".encode(), 21.3, False),
    (b"-4", -4.0, False), (b'{"value": 20.5}', 20.5, False), (b"20.5e0", 20.5, False), (b"19", 19.0, False),
    (b"nan", math.nan, False), (b'{"value": null}', math.nan, False),
    (b"", math.nan, True), (b"\xff\xfe", math.nan, True), (b"warm", math.nan, True), (b"on", math.nan, True),
    (b'{"temp": 20}', math.nan, True), (b'{"value": [1, 2]}', math.nan, True), (b"{broken", math.nan, True),
    (b"1e999", math.nan, True), (b"true", math.nan, True),
    (b'{"value": 1' + b"0" * 400 + b"}", math.nan, True),  # a JSON integer beyond a float
    (b"1" + b"0" * 400, math.nan, True), (b"-inf", math.nan, True),
    (b"21.5" + b" " * 2000, math.nan, True),  # over the payload limit: not parsed at all
])
def test_temperature_payloads(payload, expected, problem):
    value, why = load_layout().parse_number("temperature", payload)
    assert (why is not None) == problem, why
    assert (math.isnan(value) and math.isnan(expected)) or value == pytest.approx(expected)


@pytest.mark.parametrize("payload, expected", [
    (b"1", 1.0), (b"0", 0.0), (b"on", 1.0), (b"OFF", 0.0), (b"true", 1.0), (b"false", 0.0), (b"1.0", 1.0),
    (b'{"value": 1}', 1.0), (b'{"value": "off"}', 0.0), (b'{"value": true}', 1.0), (b"junk", math.nan),
])
def test_relay_payloads(payload, expected):
    value, why = load_layout().parse_relay("relay_state", payload)
    if math.isnan(expected):
        assert math.isnan(value) and why
    else:
        assert value == expected and why is None


def test_modes_and_encodings_round_trip_plain_and_json():
    lay = load_layout()
    assert lay.encode("relay_set", True) == "1" and lay.encode("relay_set", False) == "0"
    assert lay.encode("mode_set", "pems") == "1" and lay.encode("mode_set", "home") == "0"
    assert lay.encode("temperature", 21.25) == "21.25" and lay.encode("temperature", math.nan) == "nan"
    for m in ("pems", "home"):
        assert lay.parse_mode(lay.encode("mode_set", m).encode()) == (m, None)
        assert lay.parse_mode(m.upper().encode()) == (m, None)
    assert lay.parse_mode(b"maybe")[0] is None and lay.parse_mode(b"maybe")[1]
    js = lay.model_copy(update={"payload": lay.payload.model_copy(update={"format": "json", "on": "on", "off": "off"})})
    assert js.encode("temperature", 20.5) == '{"value": 20.5}'
    assert js.encode("relay_set", True) == '{"value": "on"}'
    assert js.encode("mode_set", "pems") == '{"value": 1}'
    assert js.parse_relay("relay_set", js.encode("relay_set", False).encode()) == (0.0, None)
    assert js.parse_mode(js.encode("mode_set", "home").encode()) == ("home", None)
    assert js.parse_number("temperature", js.encode("temperature", math.nan).encode())[1] is None


# ---------------------------------------------------------------------------------------------
# credentials (no broker)
# ---------------------------------------------------------------------------------------------
def test_credentials_from_environment_and_file(tmp_path, caplog):
    env = {"PEMS_MQTT_USERNAME": "pems", "PEMS_MQTT_PASSWORD": SECRET}
    c = credentials_from(environ=env)
    assert (c.username, c.password) == ("pems", SECRET)
    assert SECRET not in repr(c) and SECRET not in str(c) and "***" in repr(c)
    f = tmp_path / "mqtt.env"
    f.write_text(f"# broker\nexport PEMS_MQTT_USERNAME=fileuser\nPASSWORD='{SECRET}'\nOTHER=x\n")
    os.chmod(f, 0o600)
    with caplog.at_level(logging.WARNING):
        c2 = credentials_from(file=f, environ={})
    assert (c2.username, c2.password) == ("fileuser", SECRET)
    assert not caplog.records  # 0600: no warning
    assert credentials_from(file=f, environ={"PEMS_MQTT_USERNAME": "envuser"}).username == "envuser"  # env wins
    assert credentials_from(environ={}) == Credentials(None, None)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620, 0o660])
def test_a_credentials_file_others_may_read_or_change_is_refused(tmp_path, mode):
    """As ssh refuses a private key others can read: the file is not used at all."""
    f = tmp_path / "mqtt.env"
    f.write_text(f"USERNAME=u\nPASSWORD={SECRET}\n")
    os.chmod(f, mode)
    with pytest.raises(InputError, match=f"mode {mode:o}.*chmod 600") as err:
        credentials_from(file=f, environ={})
    assert SECRET not in str(err.value)
    os.chmod(f, 0o400)
    assert credentials_from(file=f, environ={}).password == SECRET


def test_credentials_file_errors_never_show_the_password(tmp_path, caplog):
    bad = tmp_path / "bad.env"
    bad.write_text(f"USERNAME=u\n{SECRET}\n")  # a password pasted without a key
    os.chmod(bad, 0o600)
    with pytest.raises(InputError) as err:
        credentials_from(file=bad, environ={})
    assert "line 2" in str(err.value) and SECRET not in str(err.value)
    with pytest.raises(InputError, match="without a user name"):
        credentials_from(environ={"PEMS_MQTT_PASSWORD": SECRET})
    with pytest.raises(InputError, match="not found"):
        credentials_from(file=tmp_path / "missing.env", environ={})
    assert SECRET not in caplog.text


def test_a_retained_value_never_looks_fresh():
    now, wall = [100.0], [1_700_000_000.0]
    store = ValueStore(clock=lambda: now[0], wall=lambda: wall[0])
    store.set("T", 20.0, retained=True)  # at start-up: hours old for all we know
    assert store.snapshot(["T"]) == ({"T": 20.0}, {"T": math.inf})
    store.set("T", 21.0)  # a fresh message
    now[0] += 60.0
    wall[0] += 60.0
    store.set("T", 21.0, retained=True)  # the broker replays it after a reconnect
    assert store.snapshot(["T", "never"])[1] == {"T": 60.0, "never": math.inf}
    store.set("T", 22.0, retained=True)  # changed while we were away: published after our last fresh one
    assert store.snapshot(["T"]) == ({"T": 22.0}, {"T": 60.0})
    store.set("T", 23.0, retained=True, measured_at=wall[0] - 5.0)  # the payload says when
    assert store.snapshot(["T"])[1]["T"] == pytest.approx(5.0)
    store.set("T", 23.0, retained=True, measured_at=wall[0] + 900.0)  # a clock ahead: not fresher than now
    assert store.snapshot(["T"])[1]["T"] == 0.0


def test_a_payload_says_its_own_time():
    lay = load_layout("loxberry")
    assert lay.payload_time(b'{"value": 21.5, "timestamp": 1700000000}') == 1_700_000_000.0
    assert lay.payload_time(b'{"value": 21.5, "ts": 1700000000123}') == pytest.approx(1_700_000_000.123)
    assert lay.payload_time('{"value": 21.5, "time": "2023-11-14T22:13:20Z"}') == 1_700_000_000.0
    for p in (b"21.5", b'{"value": 21.5}', b'{"value": 1, "time": "yesterday"}', b"{broken", b"\xff"):
        assert lay.payload_time(p) is None


def test_dry_run_without_a_broker_refuses_every_write():
    lx = LoxoneMqtt("127.0.0.1", 1883, ROOMS, dry_run=True)
    bus: RoomBus = lx  # the protocol is not runtime-checkable: check its members by hand
    assert all(callable(getattr(bus, m)) for m in ("connect", "close", "read", "set_relays", "set_mode"))
    assert bus.rooms == tuple(ROOMS)
    recs = lx.set_relays({"obyvak": True, "kuchyne": False}) + lx.set_mode("pems")
    assert len(recs) == 2 + len(ROOMS)
    assert all(not r.sent and r.reason == "dry-run" and r.device == "loxone" for r in recs)
    assert recs[0].target == "loxone/room/obyvak/heating/set" and recs[0].value == 1.0
    not_connected = LoxoneMqtt("127.0.0.1", 1883, ROOMS).set_relays({"obyvak": True})
    assert not_connected[0].reason == "not connected" and not not_connected[0].sent
    r = lx.read()
    assert all(math.isnan(v) for v in r.T_room.values()) and all(math.isinf(a) for a in r.age_s.values())


# ---------------------------------------------------------------------------------------------
# against mosquitto
# ---------------------------------------------------------------------------------------------
@pytest.mark.service
def test_states_flow_from_home_to_loop_with_parsing(broker, home, loop):
    assert wait_until(lambda: loop.gateway_online is True)  # the emulated gateway announced itself
    n = home.publish_state(T_room={"obyvak": 21.5, "kuchyne": 19.25, "loznice": math.nan},
                           relay={"obyvak": True, "kuchyne": 0}, T_out=-3.5, mode={"obyvak": "pems"})
    assert n == 6  # the nan room is not published
    assert wait_until(lambda: loop.read().T_out == -3.5 and loop.modes()["obyvak"] == "pems")
    r = loop.read()
    assert r.connected and r.T_room["obyvak"] == 21.5 and r.T_room["kuchyne"] == 19.25
    assert math.isnan(r.T_room["loznice"]) and math.isinf(r.age_s["T_room__loznice"])
    assert (r.relay["obyvak"], r.relay["kuchyne"]) == (1.0, 0.0) and math.isnan(r.relay["loznice"])
    assert 0 <= r.age_s["T_room__obyvak"] < 2
    # what other publishers may send: JSON, words, garbage (→ nan and a counted problem, no exception)
    raw = Sniffer(broker.host, broker.port)
    try:
        raw.publish("loxone/room/loznice/temperature", '{"value": 18.75}')
        raw.publish("loxone/room/loznice/heating/state", "on")
        raw.publish("loxone/room/kuchyne/temperature", "warm")
        assert wait_until(lambda: loop.problems.total == 1 and loop.read().relay["loznice"] == 1.0)
    finally:
        raw.close()
    r = loop.read()
    assert r.T_room["loznice"] == 18.75 and math.isnan(r.T_room["kuchyne"])
    assert loop.problems.counts() == {"temperature": 1}
    assert "warm" in loop.problems.last()["temperature"]


@pytest.mark.service
def test_hostile_payloads_become_nan_and_a_counted_problem_without_a_traceback(broker, home, loop, caplog):
    """A number beyond a float, a megabyte, an infinity: each sets the value to nan at once (the old
    reading is not kept), is counted, and logs one warning per topic, never a traceback."""
    home.publish_state(T_room={"obyvak": 21.5, "kuchyne": 20.0})
    assert wait_until(lambda: loop.read().T_room["kuchyne"] == 20.0)
    raw = Sniffer(broker.host, broker.port)
    caplog.set_level(logging.WARNING, logger="pems.live.loxone")
    try:
        for _ in range(5):
            raw.publish("loxone/room/obyvak/temperature", '{"value": 1' + "0" * 400 + "}")
        raw.publish("loxone/room/kuchyne/temperature", "2" * (1 << 20))
        raw.publish("loxone/outdoor/temperature", "-Infinity")
        assert wait_until(lambda: loop.problems.total == 7)
    finally:
        raw.close()
    r = loop.read()
    assert math.isnan(r.T_room["obyvak"]) and math.isnan(r.T_room["kuchyne"]) and math.isnan(r.T_out)
    assert loop.handler_errors == 0
    assert not any(rec.exc_info for rec in caplog.records)
    warned = [rec for rec in caplog.records if "unreadable payload" in rec.getMessage()]
    assert len(warned) == 3  # once per topic
    assert "limit" in loop.problems.last()["temperature"] or "too large" in loop.problems.last()["temperature"]


@pytest.mark.service
def test_commands_flow_from_loop_to_home(home, loop):
    time.sleep(0.3)
    assert home.loop_online is not True  # connected, but not "online" before it has commanded anything
    assert loop.announce_online()
    assert wait_until(lambda: home.loop_online is True)  # the loop's status topic
    recs = loop.set_relays({"obyvak": True, "kuchyne": False})
    assert all(r.sent for r in recs)
    assert home.wait_for_commands(2, 3)
    assert home.relay_commands == {"obyvak": True, "kuchyne": False, "loznice": None}
    assert home.modes == {r: "home" for r in ROOMS}  # a real home starts on its own thermostats
    loop.set_mode("pems")
    assert home.wait_for_commands(2 + len(ROOMS), 3)
    assert home.modes == {r: "pems" for r in ROOMS}
    log = home.commands()
    assert [c.kind for c in log] == ["relay", "relay"] + ["mode"] * len(ROOMS)
    assert log[0].room == "obyvak" and log[0].value is True and log[0].topic == "loxone/room/obyvak/heating/set"
    assert all(c.time.tzinfo is not None for c in log) and log[0].time <= log[-1].time
    assert home.commands(since=len(log)) == []
    loop.close()
    assert wait_until(lambda: home.loop_online is False)  # said goodbye on the status topic


@pytest.mark.service
def test_dry_run_sends_nothing(broker, home):
    raw = Sniffer(broker.host, broker.port)
    dry = LoxoneMqtt(broker.host, broker.port, ROOMS, dry_run=True, **FAST)
    try:
        dry.connect()
        home.publish_state(T_room={"obyvak": 20.0})
        assert wait_until(lambda: dry.read().T_room["obyvak"] == 20.0)  # it does listen
        recs = dry.set_relays({r: True for r in ROOMS}) + dry.set_mode("pems")
        assert all(not r.sent and r.reason == "dry-run" for r in recs)
        time.sleep(0.5)
        assert "loxone/room/obyvak/temperature" in raw.topics()  # the sniffer does see traffic ...
        written = [t for t in raw.topics() if t.endswith("/set") or t.startswith("pems/")]
        assert written == []  # ... but no command and no status from the dry-run loop
        assert home.commands() == []
    finally:
        dry.close()
        raw.close()
    assert not [t for t in raw.topics() if t.startswith("pems/")]  # not even a goodbye


@pytest.mark.service
def test_ages_grow_when_the_home_stops_publishing(home, loop):
    home.publish_state(T_room={r: 20.0 for r in ROOMS}, relay={r: False for r in ROOMS}, T_out=1.0)
    assert wait_until(lambda: loop.read().T_out == 1.0)
    a1 = loop.read().age_s
    time.sleep(0.6)
    a2 = loop.read().age_s
    for key in ("T_room__obyvak", "relay__kuchyne", "T_out"):
        assert a2[key] >= a1[key] + 0.55, key
    home.publish_state(T_room={"obyvak": 20.5})
    assert wait_until(lambda: loop.read().age_s["T_room__obyvak"] < 0.3)
    assert loop.read().age_s["T_room__kuchyne"] > 0.55  # the others still age


@pytest.mark.service
def test_broker_restart_reconnects_and_resubscribes(broker, home, loop):
    home.publish_state(T_room={"obyvak": 20.0})
    assert wait_until(lambda: loop.read().T_room["obyvak"] == 20.0)
    broker.stop()
    assert wait_until(lambda: not loop.read().connected and not home.connected)
    rec = loop.set_relays({"obyvak": True})[0]
    assert not rec.sent and rec.reason == "not connected"  # not queued for a replay later
    assert loop.read().T_room["obyvak"] == 20.0  # the last value stays, aging
    broker.start()  # same port; persistence off: retained messages are gone
    assert wait_until(lambda: loop.read().connected and home.connected, timeout=5)
    assert loop.connections == 2 and loop.disconnections == 1
    home.publish_state(T_room={"obyvak": 22.5})
    assert wait_until(lambda: loop.read().T_room["obyvak"] == 22.5)  # subscriptions renewed
    loop.set_relays({"kuchyne": True})
    assert home.wait_for_commands(1, 3) and home.relay_commands["kuchyne"] is True
    assert home.commands()[0].room == "kuchyne"  # the refused command was never delivered


@pytest.mark.service
def test_broker_down_at_startup(tmp_path):
    port = free_port()
    with pytest.raises(MqttConnectError, match="no answer"):
        LoxoneMqtt("127.0.0.1", port, ROOMS, **{**FAST, "connect_timeout_s": 0.5}).connect()
    lx = LoxoneMqtt("127.0.0.1", port, ROOMS, **FAST)
    lx.connect(wait_s=0)  # keeps trying in the background
    try:
        assert not lx.read().connected
        with mosquitto(tmp_path, port=port) as b:
            assert wait_until(lambda: lx.read().connected, timeout=5)
            home = LoxoneHomeMqtt(b.host, b.port, ROOMS, **FAST)
            home.connect()
            home.publish_state(T_room={"obyvak": 23.0})
            assert wait_until(lambda: lx.read().T_room["obyvak"] == 23.0)
            home.close()
    finally:
        lx.close()


@pytest.mark.service
def test_username_password_and_a_wrong_password(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)  # paho's packet log too
    with mosquitto(tmp_path, username="pems", password=SECRET) as b:
        with pytest.raises(MqttConnectError) as err:
            LoxoneMqtt(b.host, b.port, ROOMS, **FAST).connect()  # anonymous: refused
        assert "without credentials" in str(err.value)
        good = LoxoneMqtt(b.host, b.port, ROOMS, username="pems", password=SECRET, **FAST)
        good.connect()
        home = LoxoneHomeMqtt(b.host, b.port, ROOMS, username="pems", password=SECRET, **FAST)
        home.connect()
        try:
            home.publish_state(T_room={"loznice": 17.5})
            assert wait_until(lambda: good.read().T_room["loznice"] == 17.5)
            assert SECRET not in repr(good) and SECRET not in repr(home) and "***" in repr(good)
        finally:
            good.close()
            home.close()
        wrong = SECRET[::-1]
        bad = LoxoneMqtt(b.host, b.port, ROOMS, username="pems", password=wrong, **FAST)
        with pytest.raises(MqttConnectError) as err:
            bad.connect()
        msg = str(err.value)
        assert "refused" in msg and "'pems'" in msg and f"{b.host}:{b.port}" in msg
        assert wrong not in msg and wrong not in repr(bad) and wrong not in repr(err.value)
        assert not bad.connected
    assert SECRET not in caplog.text and wrong not in caplog.text
    assert any("connected to" in r.getMessage() for r in caplog.records)  # the log was captured


@pytest.mark.service
def test_tls_with_a_private_ca(tmp_path):
    files = make_tls_files(tmp_path / "pki")
    with mosquitto(tmp_path, tls=files) as b:
        tls = TLSConfig(ca_file=files["ca_file"])
        lx = LoxoneMqtt(b.host, b.port, ROOMS, tls=tls, **FAST)
        home = LoxoneHomeMqtt(b.host, b.port, ROOMS, tls=tls, **FAST)
        lx.connect()
        home.connect()
        try:
            home.publish_state(T_out=4.25)
            assert wait_until(lambda: lx.read().T_out == 4.25)
            lx.set_relays({"obyvak": True})
            assert home.wait_for_commands(1, 3)
        finally:
            lx.close()
            home.close()
        with pytest.raises(MqttConnectError, match="TLS"):  # the system's CAs do not know ours
            LoxoneMqtt(b.host, b.port, ROOMS, tls=TLSConfig(), **FAST).connect()
        with pytest.raises(MqttConnectError, match=r"set \[mqtt.tls\]"):  # plain MQTT on a TLS listener: no CONNACK
            LoxoneMqtt(b.host, b.port, ROOMS, **{**FAST, "connect_timeout_s": 1.0}).connect()
    (tmp_path / "plain").mkdir()
    with mosquitto(tmp_path / "plain") as b:  # TLS to a plain port: the broker hangs up, and the message says why
        with pytest.raises(MqttConnectError, match=r"TLS port .*remove \[mqtt.tls\]"):
            LoxoneMqtt(b.host, b.port, ROOMS, tls=TLSConfig(ca_file=files["ca_file"]), **FAST).connect()
    with pytest.raises(InputError, match="not found"):
        TLSConfig(ca_file=tmp_path / "nope.crt").check()

