"""The home's side of the Loxone MQTT bus, for the emulator: what a Miniserver behind LoxBerry does.

:class:`LoxoneHomeMqtt` publishes room temperatures, relay states, the mode in force and the outdoor
temperature under a layout's state topics (retained, like the gateway's ``retain`` command), announces
itself on the gateway's status topic (``Connected``, last will ``Disconnected``), and receives the
loop's relay and mode commands. It applies nothing itself: the emulator reads the latest commanded
relay state and mode per room (:attr:`LoxoneHomeMqtt.relay_commands`, :attr:`LoxoneHomeMqtt.modes`)
and the log of every command received with its time (:meth:`LoxoneHomeMqtt.commands`), and decides —
in ``"home"`` mode the room's own thermostat rules, in ``"pems"`` mode the commanded relay state.
The loop cannot tell this from a real home: same topics, payloads, QoS and retain flags.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import paho.mqtt.client as mqtt

from pems.live.devices import HeatingMode
from pems.live.mqtt import MqttEndpoint, TLSConfig
from pems.live.topics import Layout, ProblemCounter, load_layout, rooms_of

log = logging.getLogger(__name__)

#: The LoxBerry MQTT Gateway's last will on its status topic.
GATEWAY_OFFLINE = "Disconnected"


@dataclass(frozen=True)
class Command:
    """One command the home received."""

    time: pd.Timestamp  # when it arrived (UTC)
    room: str
    kind: Literal["relay", "mode"]
    value: bool | HeatingMode  # relay: True = heat; mode: "pems" | "home"
    topic: str
    retained: bool = False  # replayed by the broker (a retained command), not sent just now


class LoxoneHomeMqtt(MqttEndpoint):
    """The emulated Loxone Miniserver + LoxBerry gateway on an MQTT broker.

    Parameters
    ----------
    host, port
        The broker.
    rooms
        Room ids (as in the house file).
    layout
        Built-in layout name, layout TOML path or :class:`~pems.live.topics.Layout` (same as the loop's).
    username, password, tls, client_id
        As for :class:`~pems.live.loxone.LoxoneMqtt`.
    initial_mode
        The mode of every room before any command: ``"home"`` (its own thermostats), as a real home starts.
    announce_gateway
        Publish the gateway's status topic (``Connected`` retained, last will ``Disconnected``).
    **options
        Passed to :class:`~pems.live.mqtt.MqttEndpoint`.
    """

    _id_prefix = "pems-home"

    def __init__(self, host: str, port: int, rooms: Iterable[str], layout: str | Path | Layout = "loxberry",
                 username: str | None = None, password: str | None = None, tls: TLSConfig | None = None,
                 client_id: str | None = None, initial_mode: HeatingMode = "home", announce_gateway: bool = True,
                 **options: Any) -> None:
        self.layout = load_layout(layout)
        self.rooms: tuple[str, ...] = rooms_of(rooms)
        if initial_mode not in ("pems", "home"):
            raise ValueError(f"initial_mode must be 'pems' or 'home', got {initial_mode!r}")
        lay = self.layout
        self._routes = lay.routes(self.rooms, ("relay_set", "mode_set", "loop_status", "loop_heartbeat",
                                               "loop_problem"))
        lay.routes(self.rooms, ("temperature", "relay_state", "mode_state", "outdoor"))  # validates names
        self._announce = bool(announce_gateway and lay.topics.gateway_status)
        will = (lay.topics.gateway_status, GATEWAY_OFFLINE, lay.state.qos, True) if self._announce else None
        super().__init__(host, port, username=username, password=password, tls=tls, client_id=client_id,
                         will=will, **options)
        self._cmd_lock = threading.Condition()
        self._relay: dict[str, bool | None] = {r: None for r in self.rooms}
        self._mode: dict[str, HeatingMode] = {r: initial_mode for r in self.rooms}
        self._log: list[Command] = []
        self._loop_online: bool | None = None
        self.loop_problems: list[str] = []  # what the loop said on its problem topic, in order
        self.heartbeats = 0  # heartbeats received (the emulator times them at its own ticks)
        self.problems = ProblemCounter()
        self.published = 0  # state messages handed to the broker connection

    # -- what the emulator reads -----------------------------------------------------------------
    @property
    def relay_commands(self) -> dict[str, bool | None]:
        """Latest commanded relay state per room (None: never commanded)."""
        with self._cmd_lock:
            return dict(self._relay)

    @property
    def modes(self) -> dict[str, HeatingMode]:
        """Latest commanded mode per room (``initial_mode`` until a command arrives)."""
        with self._cmd_lock:
            return dict(self._mode)

    @property
    def loop_online(self) -> bool | None:
        """What the loop's status topic last said (None: nothing yet, or no such topic)."""
        with self._cmd_lock:
            return self._loop_online

    def commands(self, since: int = 0) -> list[Command]:
        """Every command received, oldest first (from index ``since``: pass the previous length)."""
        with self._cmd_lock:
            return self._log[since:]

    def wait_for_commands(self, count: int, timeout_s: float) -> bool:
        """Block (the caller's thread) until at least ``count`` commands were received in all."""
        deadline = time.monotonic() + timeout_s
        with self._cmd_lock:
            while len(self._log) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cmd_lock.wait(left)
            return True

    # -- what the emulator publishes -------------------------------------------------------------
    def publish_state(self, T_room: Mapping[str, float] | None = None, relay: Mapping[str, float | bool] | None = None,
                      T_out: float | None = None, mode: Mapping[str, HeatingMode] | None = None) -> int:
        """Publish the home's values under the state topics (the layout's QoS and retain flag).

        Parameters
        ----------
        T_room
            Room id → air temperature [°C].
        relay
            Room id → relay state (bool or 0/1) as switched.
        T_out
            Outdoor temperature [°C] (needs an ``outdoor`` topic).
        mode
            Room id → mode in force (needs a ``mode_state`` topic).

        Returns
        -------
        int
            Messages handed to the connection. Non-finite values are not published (a real
            Miniserver says nothing about a missing sensor: the loop sees the value age); unknown
            rooms and topics the layout lacks are skipped; nothing is sent while disconnected.
        """
        lay = self.layout
        msgs: list[tuple[str, str]] = []
        for room, v in (T_room or {}).items():
            if room in self.rooms and _finite(v):
                msgs.append((lay.topic("temperature", room), lay.encode("temperature", v)))
        for room, v in (relay or {}).items():
            if room in self.rooms and (isinstance(v, bool) or _finite(v)):
                msgs.append((lay.topic("relay_state", room), lay.encode("relay_state", bool(v))))
        if lay.topics.mode_state:
            for room, m in (mode or {}).items():
                if room in self.rooms and m in ("pems", "home"):
                    msgs.append((lay.topic("mode_state", room), lay.encode("mode_state", m)))
        if T_out is not None and lay.topics.outdoor and _finite(T_out):
            msgs.append((lay.topics.outdoor, lay.encode("outdoor", T_out)))
        client = self._client
        if client is None or not self.connected:
            return 0
        n = 0
        for topic, payload in msgs:
            info = client.publish(topic, payload, qos=lay.state.qos, retain=lay.state.retain)
            if info.rc == mqtt.MQTT_ERR_SUCCESS:
                n += 1
        self.published += n
        return n

    # -- internals -------------------------------------------------------------------------------
    def _subscriptions(self) -> list[tuple[str, int]]:
        return [(t, self.layout.command.qos) for t in self._routes]

    def _on_connected(self, client: mqtt.Client) -> None:
        if self._announce:
            client.publish(self.layout.topics.gateway_status, self.layout.payload.gateway_online,
                           qos=self.layout.state.qos, retain=True)

    def _before_close(self, client: mqtt.Client) -> None:
        if self._announce and self.connected:
            client.publish(self.layout.topics.gateway_status, GATEWAY_OFFLINE, qos=self.layout.state.qos, retain=True)

    def _handle(self, topic: str, payload: bytes, retained: bool) -> None:
        route = self._routes.get(topic)
        if route is None:
            return
        key, room = route
        lay = self.layout
        now = pd.Timestamp.now(tz="UTC")
        if key == "loop_heartbeat":
            with self._cmd_lock:
                self.heartbeats += 1
            return
        if key == "loop_problem":
            with self._cmd_lock:
                self.loop_problems.append(_text(payload, lower=False))
            return
        if key == "loop_status":
            text, enc = _text(payload), lay.payload
            if text in (enc.online.strip().lower(), enc.offline.strip().lower()):
                online = text == enc.online.strip().lower()
            else:  # JSON or on/off words
                x, problem = lay.parse_relay("relay_state", payload)
                if problem or math.isnan(x):
                    self.problems.add(key, f"{topic}: {problem or 'no value'}")
                    return
                online = x != 0
            with self._cmd_lock:
                self._loop_online = online
            return
        assert room is not None
        cmd: Command | None = None
        if key == "relay_set":
            x, problem = lay.parse_relay(key, payload)
            if problem is None and not math.isnan(x):
                cmd = Command(now, room, "relay", bool(x), topic, retained)
        else:  # mode_set
            m, problem = lay.parse_mode(payload)
            if m is not None:
                cmd = Command(now, room, "mode", m, topic, retained)
            problem = problem if m is None else None
        if cmd is None:
            self.problems.add(key, f"{topic}: {problem or 'no value'}")
            log.warning("MQTT %s: command not understood (%s); ignored", topic, problem or "no value")
            return
        with self._cmd_lock:
            if cmd.kind == "relay":
                self._relay[room] = bool(cmd.value)
            else:
                self._mode[room] = cmd.value  # type: ignore[assignment]
            self._log.append(cmd)
            self._cmd_lock.notify_all()


def _finite(v: Any) -> bool:
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def _text(payload: bytes, lower: bool = True) -> str:
    try:
        text = payload.decode("utf-8").strip()
    except UnicodeDecodeError:
        return ""
    return text.lower() if lower else text
