"""Loxone over MQTT: the loop's side of the room bus (paho-mqtt 2.x).

:class:`LoxoneMqtt` implements :class:`pems.live.devices.RoomBus`. It subscribes to the home's state
topics of a layout (:mod:`pems.live.topics`; the default is ``loxberry``, the LoxBerry MQTT Gateway's
style), keeps the latest value of each with the time it arrived, and publishes relay and mode
commands. ``read()`` returns a snapshot and never touches the network.

Safety: ``dry_run=True`` publishes nothing at all (commands are returned as refused records with the
reason ``"dry-run"``); commands are not queued while the broker is away (refused, reason ``"not
connected"``), so stale commands are not replayed on reconnect. The connection, credentials and TLS
are the generic :class:`~pems.live.mqtt.MqttEndpoint`'s.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import paho.mqtt.client as mqtt

from pems.live.devices import HeatingMode, RoomReadings, WriteRecord
from pems.live.mqtt import MqttEndpoint, TLSConfig
from pems.live.topics import Layout, ProblemCounter, load_layout, rooms_of

log = logging.getLogger(__name__)

DEVICE = "loxone"


# ---------------------------------------------------------------------------------------------
# Latest values with their arrival times
# ---------------------------------------------------------------------------------------------
class ValueStore:
    """Latest value per key with the monotonic time it was measured — thread-safe.

    Retained messages are old news of unknown age (the broker replays them to every new subscriber
    and after every reconnect), so they never make a value look fresh:

    - a retained value whose payload carries its own time (:meth:`set`'s ``measured_at``) counts
      from that time;
    - any other retained value keeps the time of the last fresh message of its key (it was
      published after that one, so that age is an upper bound), and has no age at all (``inf``:
      stale) when none came yet, as at start-up.

    A fresh (non-retained) message counts from its arrival.

    Parameters
    ----------
    clock
        Monotonic clock [s] of the ages.
    wall
        Calendar clock [Unix s], to place a payload's own time on ``clock``.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._wall = wall
        self._lock = threading.Lock()
        self._values: dict[str, Any] = {}
        self._times: dict[str, float] = {}

    def set(self, key: str, value: Any, retained: bool = False, measured_at: float | None = None) -> None:
        """Store ``value``; ``measured_at`` [Unix s] is the time its payload gave, if any."""
        now = self._clock()
        if measured_at is not None and math.isfinite(measured_at):
            t = now - max(0.0, self._wall() - measured_at)  # a time from the future counts as now
        else:
            t = None if retained else now
        with self._lock:
            self._values[key] = value
            if t is not None:
                self._times[key] = t

    def get(self, key: str, default: Any = math.nan) -> Any:
        with self._lock:
            return self._values.get(key, default)

    def snapshot(self, keys: Iterable[str]) -> tuple[dict[str, Any], dict[str, float]]:
        """Values and ages [s] of ``keys`` (age ``inf`` for a key never received fresh)."""
        now = self._clock()
        with self._lock:
            values = {k: self._values.get(k) for k in keys}
            ages = {k: (now - self._times[k]) if k in self._times else math.inf for k in values}
        return values, ages


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


# ---------------------------------------------------------------------------------------------
# The loop's side
# ---------------------------------------------------------------------------------------------
class LoxoneMqtt(MqttEndpoint):
    """Loxone rooms over MQTT, as the live loop sees them (implements ``RoomBus``).

    Parameters
    ----------
    host, port
        The broker (LoxBerry's mosquitto, usually port 1883, or 8883 with TLS).
    rooms
        Room ids (as in the house file); the layout's ``[rooms]`` may rename them in topics.
    layout
        A built-in layout name (``"loxberry"``), a layout TOML path, or a :class:`~pems.live.topics.Layout`.
    username, password
        Broker credentials (see :func:`credentials_from`); the password is never shown.
    tls
        TLS settings, or None for plain TCP.
    client_id
        MQTT client id (default ``pems-loop-xxxxxxxx``).
    dry_run
        Publish nothing at all: commands come back as records with ``sent=False, reason="dry-run"``.
    qos
        QoS of commands and subscriptions (default: the layout's ``[command] qos``).
    clock
        Monotonic clock for the ages [s] (tests and accelerated emulation may pass their own).
    wall
        Calendar clock [Unix s] against which a payload's own time (``timestamp``, ``time`` or
        ``ts`` in a JSON payload) is read.
    **options
        Passed to :class:`MqttEndpoint` (keepalive_s, reconnect_min_s, reconnect_max_s, connect_timeout_s).

    Notes
    -----
    ``read().age_s`` has one entry per value the layout provides: ``T_room__<room>``,
    ``relay__<room>``, ``mode__<room>`` (with a ``mode_state`` topic), ``T_out`` (with an ``outdoor``
    topic) and ``gateway`` (with a ``gateway_status`` topic); ``inf`` until the first message. An
    unreadable payload sets the value to nan (its age restarts: the home is alive, the value is not)
    and is counted in :attr:`problems`.

    Writes: in dry-run nothing is published (no commands, no ``loop_status``, no last will); while
    the connection is down commands are refused with reason ``"not connected"`` rather than queued.
    With a ``loop_status`` topic the loop publishes ``online`` (retained) once it has sent fresh
    commands (:meth:`announce_online`) and on every reconnection after that, ``offline`` on
    :meth:`close`, and leaves ``offline`` as its last will.
    """

    _id_prefix = "pems-loop"

    def __init__(self, host: str, port: int, rooms: Iterable[str], layout: str | Path | Layout = "loxberry",
                 username: str | None = None, password: str | None = None, tls: TLSConfig | None = None,
                 client_id: str | None = None, dry_run: bool = False, qos: int | None = None,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time,
                 **options: Any) -> None:
        self.layout = load_layout(layout)
        self.rooms: tuple[str, ...] = rooms_of(rooms)
        self.dry_run = bool(dry_run)
        self.qos = self.layout.command.qos if qos is None else int(qos)
        if self.qos not in (0, 1, 2):
            raise ValueError(f"qos must be 0, 1 or 2, got {qos}")
        lay = self.layout
        self._routes = lay.routes(self.rooms, ("temperature", "relay_state", "mode_state", "outdoor",
                                               "gateway_status"))
        self._command_topics = lay.routes(self.rooms, ("relay_set", "mode_set"))
        will = None
        if lay.topics.loop_status and not self.dry_run:
            # The broker tells the home that the loop is gone (the Miniserver can fall back to its thermostats).
            will = (lay.topics.loop_status, lay.encode("loop_status", False), self.qos, True)
        super().__init__(host, port, username=username, password=password, tls=tls, client_id=client_id,
                         will=will, **options)
        self.values = ValueStore(clock, wall)
        self.problems = ProblemCounter()
        keys = [f"T_room__{r}" for r in self.rooms] + [f"relay__{r}" for r in self.rooms]
        if lay.topics.mode_state:
            keys += [f"mode__{r}" for r in self.rooms]
        if lay.topics.outdoor:
            keys.append("T_out")
        if lay.topics.gateway_status:
            keys.append("gateway")
        self._keys = tuple(keys)
        self._warned: set[str] = set()
        self._online = False  # announce_online() was called: "online" is (re)published on every connection

    def __repr__(self) -> str:
        base = super().__repr__()[:-1]
        return f"{base}, layout={self.layout.name!r}, rooms={len(self.rooms)}, dry_run={self.dry_run})"

    # -- RoomBus ---------------------------------------------------------------------------------
    def read(self) -> RoomReadings:
        """The latest values received, their ages [s] and the connection state (no network I/O)."""
        values, ages = self.values.snapshot(self._keys)

        def num(k: str) -> float:
            v = values.get(k)
            return math.nan if v is None else float(v)

        return RoomReadings(
            time=pd.Timestamp.now(tz="UTC"),
            T_room={r: num(f"T_room__{r}") for r in self.rooms},
            relay={r: num(f"relay__{r}") for r in self.rooms},
            T_out=num("T_out"),
            age_s=ages,
            connected=self.connected,
            gateway_online=values.get("gateway") if "gateway" in values else None,
        )

    def set_relays(self, on: Mapping[str, bool]) -> list[WriteRecord]:
        """Publish relay commands (``True`` = heat), one record per room.

        Unknown rooms are refused (reason ``"unknown room"``); dry-run and a lost connection refuse
        every write (see the class notes). ``sent=True`` means handed to the broker connection, not yet
        acknowledged.
        """
        now = pd.Timestamp.now(tz="UTC")
        out = []
        for room, state in on.items():
            value = 1.0 if bool(state) else 0.0
            if room not in self.rooms:
                out.append(WriteRecord(now, DEVICE, f"relay_set/{room}", value, False, "unknown room"))
                continue
            topic = self.layout.topic("relay_set", room)
            out.append(self._publish(now, topic, self.layout.encode("relay_set", state), value))
        return out

    def set_mode(self, mode: HeatingMode, rooms: Iterable[str] | None = None) -> list[WriteRecord]:
        """Publish ``mode`` (``"pems"``: the loop switches; ``"home"``: the rooms' own thermostats)
        to every room (or to ``rooms``)."""
        now = pd.Timestamp.now(tz="UTC")
        targets = self.rooms if rooms is None else tuple(rooms)
        if mode not in ("pems", "home"):
            return [WriteRecord(now, DEVICE, f"mode_set/{r}", str(mode), False, "unknown mode") for r in targets]
        out = []
        for room in targets:
            if room not in self.rooms:
                out.append(WriteRecord(now, DEVICE, f"mode_set/{room}", mode, False, "unknown room"))
                continue
            topic = self.layout.topic("mode_set", room)
            out.append(self._publish(now, topic, self.layout.encode("mode_set", mode), mode))
        return out

    # -- extras ----------------------------------------------------------------------------------
    def modes(self) -> dict[str, HeatingMode | None]:
        """The mode each room reports (``mode_state`` topic); None where unknown."""
        return {r: self.values.get(f"mode__{r}", None) for r in self.rooms}

    def heartbeat(self, now: pd.Timestamp) -> bool:
        """Publish the heartbeat (``now`` as Unix seconds, QoS 0, not retained: a retained beat would
        look alive to whoever subscribes later) on ``loop_heartbeat``. True when handed to the broker
        connection; False without such a topic, in dry-run, or while disconnected."""
        t = self.layout.topics.loop_heartbeat
        client = self._client
        if not t or self.dry_run or client is None or not self.connected:
            return False
        return client.publish(t, str(int(now.timestamp())), qos=0, retain=False).rc == mqtt.MQTT_ERR_SUCCESS

    def announce_problem(self, text: str) -> WriteRecord | None:
        """Publish ``text`` (retained) on the layout's ``loop_problem`` topic; ``""`` when the problem is
        over. None without such a topic."""
        t = self.layout.topics.loop_problem
        if not t:
            return None
        now = pd.Timestamp.now(tz="UTC")
        if self.dry_run:
            return WriteRecord(now, DEVICE, t, text, False, "dry-run")
        client = self._client
        if client is None or not self.connected:
            return WriteRecord(now, DEVICE, t, text, False, "not connected")
        info = client.publish(t, text, qos=self.qos, retain=True)
        ok = info.rc == mqtt.MQTT_ERR_SUCCESS
        return WriteRecord(now, DEVICE, t, text, ok, "" if ok else f"publish failed: {mqtt.error_string(info.rc)}")

    @property
    def gateway_online(self) -> bool | None:
        """What the gateway's status topic last said (None: nothing yet, or no such topic)."""
        return self.values.get("gateway", None)

    # -- internals -------------------------------------------------------------------------------
    def _publish(self, now: pd.Timestamp, topic: str, payload: str, value: float | str) -> WriteRecord:
        if self.dry_run:
            return WriteRecord(now, DEVICE, topic, value, False, "dry-run")
        client = self._client
        if client is None or not self.connected:
            # Not queued: paho would replay it on reconnect, when it may no longer be wanted.
            return WriteRecord(now, DEVICE, topic, value, False, "not connected")
        info = client.publish(topic, payload, qos=self.qos, retain=self.layout.command.retain)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            return WriteRecord(now, DEVICE, topic, value, False, f"publish failed: {mqtt.error_string(info.rc)}")
        return WriteRecord(now, DEVICE, topic, value, True)

    def _subscriptions(self) -> list[tuple[str, int]]:
        return [(t, self.qos) for t in self._routes]

    def _on_connected(self, client: mqtt.Client) -> None:
        t = self.layout.topics.loop_status
        if t and not self.dry_run and self._online:  # again after a reconnect; never before announce_online()
            client.publish(t, self.layout.encode("loop_status", True), qos=self.qos, retain=True)

    def announce_online(self) -> bool:
        """Say ``online`` on the status topic (retained), and again after every reconnection.

        The loop calls this once it has sent fresh commands, not at connect: a Miniserver that trusts
        the status would otherwise put its rooms under PEMS again with a dead loop's last relay
        commands (a loop restarting after a crash). True when handed to the broker connection."""
        self._online = True
        t = self.layout.topics.loop_status
        client = self._client
        if not t or self.dry_run or client is None or not self.connected:
            return False
        return client.publish(t, self.layout.encode("loop_status", True), qos=self.qos,
                              retain=True).rc == mqtt.MQTT_ERR_SUCCESS

    def _before_close(self, client: mqtt.Client) -> None:
        t = self.layout.topics.loop_status
        if t and not self.dry_run and self.connected:
            # A clean disconnect suppresses the last will: say "offline" ourselves.
            client.publish(t, self.layout.encode("loop_status", False), qos=self.qos, retain=True)

    def _handle(self, topic: str, payload: bytes, retained: bool) -> None:
        route = self._routes.get(topic)
        if route is None:
            return
        key, room = route
        lay = self.layout
        problem: str | None
        at = lay.payload_time(payload) if retained else None
        if key == "temperature":
            v, problem = lay.parse_number(key, payload)
            self.values.set(f"T_room__{room}", v, retained, at)
        elif key == "relay_state":
            v, problem = lay.parse_relay(key, payload)
            self.values.set(f"relay__{room}", v, retained, at)
        elif key == "outdoor":
            v, problem = lay.parse_number(key, payload)
            self.values.set("T_out", v, retained, at)
        elif key == "mode_state":
            m, problem = lay.parse_mode(payload)
            self.values.set(f"mode__{room}", m, retained, at)
        else:  # gateway_status
            s, problem = lay.parse_status(payload)
            self.values.set("gateway", s, retained, at)
        if problem:
            self.problems.add(key, f"{topic}: {problem}")
            # one warning per topic, then quietly counted (a broken sensor must not flood the log)
            if topic not in self._warned:
                self._warned.add(topic)
                log.warning("MQTT %s: unreadable payload (%s); counted as nan", topic, problem)
