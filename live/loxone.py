"""Loxone over MQTT: the loop's side of the room bus (paho-mqtt 2.x).

:class:`LoxoneMqtt` implements :class:`pems.live.devices.RoomBus`. It subscribes to the home's state
topics of a layout (:mod:`pems.live.topics`; the default is ``loxberry``, the LoxBerry MQTT Gateway's
style), keeps the latest value of each with the time it arrived, and publishes relay and mode
commands. The network runs in paho's own thread (``loop_start``): callbacks only parse and store,
never block; ``read()`` returns a snapshot and never touches the network. paho reconnects by itself
with an exponential backoff; every (re)connection subscribes again (clean sessions keep nothing).

Safety: ``dry_run=True`` publishes nothing at all (commands are returned as refused records with the
reason ``"dry-run"``); commands are not queued while the broker is away (refused, reason ``"not
connected"``), so stale commands are not replayed on reconnect; credentials come from the arguments,
the environment or a file (:func:`credentials_from`) and the password never appears in a log line, a
repr or an exception. TLS (CA file, client certificate) is configured with :class:`TLSConfig`.

The :class:`MqttEndpoint` base class (connection, TLS, credentials, reconnects, subscriptions) is
shared with the emulator's side of the bus, :class:`pems.live.loxone_home.LoxoneHomeMqtt`.
"""

from __future__ import annotations

import logging
import math
import os
import ssl
import stat
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import pandas as pd
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from pems.errors import InputError, ServiceError
from pems.live.devices import HeatingMode, RoomReadings, WriteRecord
from pems.live.topics import Layout, ProblemCounter, load_layout, rooms_of

log = logging.getLogger(__name__)
# paho's own debug log (packets, reconnects); it never contains the password or payloads
paho_log = logging.getLogger("pems.live.paho")

DEVICE = "loxone"


# ---------------------------------------------------------------------------------------------
# Credentials and TLS
# ---------------------------------------------------------------------------------------------
class _Secret:
    """A string that does not show itself in reprs, logs or tracebacks' ``repr`` of locals."""

    __slots__ = ("_value",)

    def __init__(self, value: str | None) -> None:
        self._value = value

    def reveal(self) -> str | None:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return "'***'" if self._value else "None"

    __str__ = __repr__


@dataclass(frozen=True)
class Credentials:
    """User name and password of the broker; the repr hides the password."""

    username: str | None = None
    password: str | None = field(default=None, repr=False)

    def __repr__(self) -> str:
        return f"Credentials(username={self.username!r}, password={'***' if self.password else None})"

    __str__ = __repr__


def credentials_from(env_prefix: str = "PEMS_MQTT_", file: str | Path | None = None,
                     environ: Mapping[str, str] | None = None) -> Credentials:
    """Broker credentials from the environment and/or a file.

    The environment's ``{env_prefix}USERNAME`` / ``{env_prefix}PASSWORD`` win; a file fills what the
    environment lacks. The file holds ``KEY=VALUE`` lines (``#`` comments, optional ``export`` and
    quotes) with keys ``{env_prefix}USERNAME``/``{env_prefix}PASSWORD`` or just ``USERNAME``/``PASSWORD``;
    other keys are ignored. It must be ``chmod 600`` (or stricter): a file that others may read is
    refused, as ssh refuses such a key.

    Parameters
    ----------
    env_prefix
        Prefix of the variable names.
    file
        Optional credentials file.
    environ
        The environment to read (default ``os.environ``; tests pass a dict).

    Raises
    ------
    InputError
        Missing file, a file others may read or write, a line that is not ``KEY=VALUE`` (its content
        is not shown: it may hold the password), or a password without a user name.
    """
    env = os.environ if environ is None else environ
    from_file: dict[str, str] = {}
    source = "environment"
    if file is not None:
        path = Path(file)
        source = str(path)
        if not path.is_file():
            raise InputError(path, "", "credentials file not found")
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise InputError(path, "", f"the credentials file may be read or changed by others (mode "
                                       f"{stat.S_IMODE(mode):o}); chmod 600 {path}")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(path, "", f"cannot read the credentials file ({type(exc).__name__})") from None
        for n, line in enumerate(text.splitlines(), start=1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            line = line.removeprefix("export ").strip()
            if "=" not in line:
                raise InputError(path, f"line {n}", "expected KEY=VALUE (the line is not shown: it may hold a secret)")
            key, value = (s.strip() for s in line.split("=", 1))
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
                value = value[1:-1]
            key = key.upper().removeprefix(env_prefix.upper())
            if key in ("USERNAME", "PASSWORD"):
                from_file[key] = value
    username = env.get(f"{env_prefix}USERNAME") or from_file.get("USERNAME") or None
    password = env.get(f"{env_prefix}PASSWORD") or from_file.get("PASSWORD") or None
    if password and not username:
        raise InputError(source, f"{env_prefix}USERNAME", "a password was given without a user name")
    return Credentials(username, password)


@dataclass(frozen=True)
class TLSConfig:
    """TLS towards the broker.

    ``ca_file``: the CA that signed the broker's certificate (None: the system's CAs).
    ``cert_file``/``key_file``: a client certificate, where the broker asks for one.
    ``insecure``: do not check that the certificate names the host (the chain is still verified);
    only for brokers reached by an address their certificate does not list.
    """

    ca_file: str | Path | None = None
    cert_file: str | Path | None = None
    key_file: str | Path | None = None
    insecure: bool = False

    def check(self) -> None:
        """Raise :class:`InputError` for a named file that does not exist."""
        for key in ("ca_file", "cert_file", "key_file"):
            p = getattr(self, key)
            if p is not None and not Path(p).is_file():
                raise InputError(p, f"tls.{key}", "file not found")
        if self.key_file is not None and self.cert_file is None:
            raise InputError(str(self.key_file), "tls.cert_file", "a client key needs its certificate")


class MqttConnectError(ServiceError, ConnectionError):
    """The broker could not be reached or refused us (the message never holds the password)."""


# ---------------------------------------------------------------------------------------------
# The connection shared by both sides of the bus
# ---------------------------------------------------------------------------------------------
class MqttEndpoint:
    """One paho client in its own network thread: connect, TLS, credentials, reconnect, re-subscribe.

    Subclasses give :meth:`_subscriptions` (topic, QoS) and :meth:`_handle` (one message, in paho's
    thread: parse and store, never block), and may publish in :meth:`_on_connected`.

    Parameters
    ----------
    host, port
        The broker.
    username, password
        Optional credentials (the password is kept hidden).
    tls
        Optional TLS settings.
    client_id
        MQTT client id (default: a unique ``prefix-xxxxxxxx``).
    keepalive_s
        MQTT keepalive [s]; a dead broker is noticed within about 1.5 × this.
    reconnect_min_s, reconnect_max_s
        Reconnect backoff: first wait and cap [s]; the wait doubles per failed attempt.
    connect_timeout_s
        How long :meth:`connect` waits for the first connection [s].
    will
        Last will ``(topic, payload, qos, retain)`` the broker publishes if we vanish.
    """

    _id_prefix = "pems"

    def __init__(self, host: str, port: int = 1883, *, username: str | None = None,
                 password: str | None = None, tls: TLSConfig | None = None, client_id: str | None = None,
                 keepalive_s: int = 30, reconnect_min_s: float = 0.5, reconnect_max_s: float = 30.0,
                 connect_timeout_s: float = 10.0, will: tuple[str, str, int, bool] | None = None) -> None:
        if not host:
            raise ValueError("no MQTT host")
        if not 0 < int(port) < 65536:
            raise ValueError(f"MQTT port must be 1–65535, got {port}")
        if password and not username:
            raise ValueError("an MQTT password needs a user name")
        if tls is not None:
            tls.check()
        self.host = host
        self.port = int(port)
        self.username = username
        self._secret = _Secret(password)
        self.tls = tls
        self.client_id = client_id or f"{self._id_prefix}-{uuid.uuid4().hex[:8]}"
        self.keepalive_s = int(keepalive_s)
        self.reconnect_min_s = float(reconnect_min_s)
        self.reconnect_max_s = float(reconnect_max_s)
        self.connect_timeout_s = float(connect_timeout_s)
        self._will = will
        self._client: mqtt.Client | None = None
        self._lock = threading.RLock()
        self._connected = False
        self._first = threading.Event()
        self._refused: str | None = None
        self._ever_connected = False
        self.connections = 0  # successful (re)connections so far
        self.disconnections = 0  # connections lost (not counting close())
        self.handler_errors = 0  # messages whose handling raised (a defect; see _cb_message)
        self._handler_failed: set[str] = set()

    # -- what subclasses fill in -----------------------------------------------------------------
    def _subscriptions(self) -> list[tuple[str, int]]:
        return []

    def _handle(self, topic: str, payload: bytes, retained: bool) -> None:  # noqa: B027 (optional hook)
        pass

    def _on_connected(self, client: mqtt.Client) -> None:  # noqa: B027 (optional hook)
        pass

    def _on_lost(self) -> None:  # noqa: B027 (optional hook)
        pass

    # -- public ----------------------------------------------------------------------------------
    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def connected(self) -> bool:
        """True while a session with the broker is up (CONNACK received, not lost since)."""
        return self._connected

    def connect(self, wait_s: float | None = None) -> None:
        """Open the connection and start the network thread; wait for the first CONNACK.

        Parameters
        ----------
        wait_s
            Seconds to wait for the broker (default ``connect_timeout_s``); ``0``: do not wait (paho
            keeps trying in the background with the backoff).

        Raises
        ------
        MqttConnectError
            No answer in time, a TLS failure, or the broker refused the credentials (then no retry).
        """
        if self._client is not None:
            return
        wait = self.connect_timeout_s if wait_s is None else float(wait_s)
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id,
                             protocol=mqtt.MQTTv311, clean_session=True)
        # paho's own messages (packets, socket errors) go to a debug logger: the events that
        # matter (connected, lost, refused) are logged by us once, at the right level.
        client.on_log = _paho_to_debug
        if self.username:
            client.username_pw_set(self.username, self._secret.reveal())
            if self.tls is None and not is_loopback(self.host):
                log.warning("MQTT %s: the broker's user name and password go over the network unencrypted "
                            "(no TLS); use TLS ([mqtt.tls]) for a broker that is not on this machine", self.where)
        if self.tls is not None:
            t = self.tls
            client.tls_set(ca_certs=_str(t.ca_file), certfile=_str(t.cert_file), keyfile=_str(t.key_file),
                           cert_reqs=ssl.CERT_REQUIRED, tls_version=ssl.PROTOCOL_TLS_CLIENT)
            if t.insecure:
                log.warning("MQTT TLS to %s: the broker's host name is not checked (insecure=True)", self.where)
                client.tls_insecure_set(True)
        if self._will is not None:
            topic, payload, qos, retain = self._will
            client.will_set(topic, payload, qos=qos, retain=retain)
        client.reconnect_delay_set(self.reconnect_min_s, self.reconnect_max_s)  # type: ignore[arg-type]
        client.on_connect = self._cb_connect
        client.on_disconnect = self._cb_disconnect
        client.on_message = self._cb_message
        self._first.clear()
        self._refused = None
        self._ever_connected = False
        self._client = client
        try:
            # The first attempt in this thread, so that a TLS or address error is reported as such ...
            client.connect(self.host, self.port, self.keepalive_s)
        except ssl.SSLError as exc:
            self._client = None
            raise MqttConnectError(f"TLS with the MQTT broker {self.where} failed: {exc.reason or exc}") from None
        except OSError as exc:
            # ... while a broker that is down is retried in the background with the backoff
            log.warning("MQTT broker %s not reachable (%s); retrying", self.where, exc.strerror or exc)
            client.connect_async(self.host, self.port, self.keepalive_s)
        client.loop_start()
        if wait <= 0:
            return
        if not self._first.wait(wait):
            self._stop()
            raise MqttConnectError(f"no answer from the MQTT broker {self.where} within {wait:g} s")
        if self._refused is not None:
            reason = self._refused
            self._stop()
            who = f" as user {self.username!r}" if self.username else " without credentials"
            raise MqttConnectError(f"the MQTT broker {self.where} refused the connection{who}: {reason}")

    def close(self) -> None:
        """Disconnect cleanly and stop the network thread (idempotent)."""
        client = self._client
        if client is None:
            return
        try:
            self._before_close(client)
        finally:
            self._stop()

    def _before_close(self, client: mqtt.Client) -> None:  # noqa: B027 (optional hook)
        pass

    def _stop(self) -> None:
        client, self._client = self._client, None
        self._connected = False
        if client is None:
            return
        try:
            client.disconnect()
        finally:
            client.loop_stop()

    def __enter__(self) -> Self:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        user = f", username={self.username!r}, password={self._secret!r}" if self.username else ""
        tls = ", tls" if self.tls else ""
        return f"{type(self).__name__}({self.host!r}, {self.port}{user}{tls}, client_id={self.client_id!r})"

    # -- paho callbacks (paho's thread: never block) ---------------------------------------------
    def _cb_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            text = str(reason)
            if not self._ever_connected:
                # Wrong credentials do not get better by retrying: stop, and let connect() raise.
                self._refused = text
                client.disconnect()
                self._first.set()
            else:
                log.error("MQTT broker %s refused the reconnection: %s (retrying)", self.where, text)
            return
        subs = self._subscriptions()
        if subs:
            client.subscribe(subs)  # non-blocking; a clean session forgot the previous subscriptions
        self._connected = True
        self._ever_connected = True
        self.connections += 1
        if self.connections > 1:
            log.info("MQTT %s reconnected to %s (%d subscriptions renewed)", self.client_id, self.where, len(subs))
        else:
            log.info("MQTT %s connected to %s", self.client_id, self.where)
        try:
            self._on_connected(client)
        except Exception:  # a bug here must not kill paho's thread
            log.exception("MQTT %s: on-connect hook failed", self.where)
        self._first.set()

    def _cb_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        was = self._connected
        self._connected = False
        if was and self._client is not None:
            self.disconnections += 1
            log.warning("MQTT %s: connection to %s lost (%s); reconnecting with backoff", self.client_id,
                        self.where, reason)
            try:
                self._on_lost()
            except Exception:
                log.exception("MQTT %s: on-lost hook failed", self.where)

    def _cb_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            self._handle(msg.topic, msg.payload, bool(msg.retain))
        except Exception:  # never let one message take the network thread down
            # a defect, not a bad payload: the traceback once per topic, then counted
            self.handler_errors += 1
            if msg.topic not in self._handler_failed:
                self._handler_failed.add(msg.topic)
                log.exception("MQTT %s: handling a message on %s failed (further failures on it are "
                              "only counted)", self.where, msg.topic)


def _paho_to_debug(client: mqtt.Client, userdata: Any, level: int, message: str) -> None:
    paho_log.debug("%s", message)


def _str(p: str | Path | None) -> str | None:
    return None if p is None else str(p)


def is_loopback(host: str) -> bool:
    """True when ``host`` is this machine (a loopback address, or a name that resolves only to ones)."""
    import ipaddress
    import socket

    h = host.strip().strip("[]")
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        pass
    try:
        addrs = {a[4][0] for a in socket.getaddrinfo(h, None)}
    except OSError:
        return False  # not resolvable: not known to be this machine
    return bool(addrs) and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addrs)


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


# ---------------------------------------------------------------------------------------------
# Following an emulator's clock from another process
# ---------------------------------------------------------------------------------------------
class ClockFollower(MqttEndpoint):
    """Reads the emulator's retained clock anchor (:data:`pems.live.clock.TIME_TOPIC`).

    A loop in another process than ``pems emulate`` builds its clock from the anchor (same start,
    speed and epoch) and needs the broker only once; see :mod:`pems.live.clock`.
    """

    _id_prefix = "pems-clock"

    def __init__(self, host: str, port: int, **options: Any) -> None:
        super().__init__(host, port, **options)
        self._anchor: Any = None
        self._got = threading.Event()

    def _subscriptions(self) -> list[tuple[str, int]]:
        from pems.live.clock import TIME_TOPIC

        return [(TIME_TOPIC, 1)]

    def _handle(self, topic: str, payload: bytes, retained: bool) -> None:
        from pems.live.clock import ClockAnchor

        try:
            self._anchor = ClockAnchor.from_json(payload)
        except ValueError as exc:
            log.warning("MQTT %s: %s", self.where, exc)
            return
        self._got.set()

    def anchor(self, timeout_s: float = 10.0) -> Any:
        """The emulator's :class:`~pems.live.clock.ClockAnchor`; ``MqttConnectError`` if none comes."""
        self.connect()
        try:
            if not self._got.wait(timeout_s):
                raise MqttConnectError(f"no emulator clock on {self.where} within {timeout_s:g} s "
                                       "(is `pems emulate` running against this broker?)")
            return self._anchor
        finally:
            self.close()
