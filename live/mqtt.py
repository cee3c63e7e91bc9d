"""A generic MQTT endpoint (paho-mqtt 2.x): connection, TLS, credentials, reconnects, subscriptions.

:class:`MqttEndpoint` is the base of both sides of the Loxone room bus (the loop's
:class:`~pems.live.loxone.LoxoneMqtt` and the emulated home's
:class:`~pems.live.loxone_home.LoxoneHomeMqtt`) and of :class:`ClockFollower`. The network runs in
paho's own thread (``loop_start``): callbacks only parse and store, never block. paho reconnects by
itself with an exponential backoff; every (re)connection subscribes again (clean sessions keep
nothing).

Credentials come from the arguments, the environment or a file (:func:`credentials_from`: refused
when others may read or write it) and the password never appears in a log line, a repr or an
exception; sending them without TLS to a broker that is not this machine is warned about
(:func:`is_loopback`). TLS (CA file, client certificate) is configured with :class:`TLSConfig`.
"""

from __future__ import annotations

import logging
import os
import ssl
import stat
import threading
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from pems.errors import InputError, ServiceError
from pems.live.clock import SimClock

log = logging.getLogger(__name__)
# paho's own debug log (packets, reconnects); it never contains the password or payloads
paho_log = logging.getLogger("pems.live.paho")


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
            raise MqttConnectError(f"TLS with the MQTT broker {self.where} failed: {exc.reason or exc}"
                                   f"{self._tls_hint()}") from None
        except ConnectionResetError as exc:
            if self.tls is None:
                raise
            # a broker's plain port hangs up on a TLS hello: "Connection reset by peer" says nothing of that
            self._client = None
            raise MqttConnectError(f"TLS with the MQTT broker {self.where} failed: {exc.strerror or exc}"
                                   f"{self._tls_hint()}") from None
        except OSError as exc:
            # ... while a broker that is down is retried in the background with the backoff
            log.warning("MQTT broker %s not reachable (%s); retrying", self.where, exc.strerror or exc)
            client.connect_async(self.host, self.port, self.keepalive_s)
        client.loop_start()
        if wait <= 0:
            return
        if not self._first.wait(wait):
            self._stop()
            hint = ("; if that port speaks TLS (often 8883), set [mqtt.tls]" if self.tls is None else "")
            raise MqttConnectError(f"no answer from the MQTT broker {self.where} within {wait:g} s{hint}")
        if self._refused is not None:
            reason = self._refused
            self._stop()
            who = f" as user {self.username!r}" if self.username else " without credentials"
            raise MqttConnectError(f"the MQTT broker {self.where} refused the connection{who}: {reason}")

    def _tls_hint(self) -> str:
        return (f"; is port {self.port} the broker's TLS port (often 8883; plain MQTT is 1883)? Without TLS there, "
                "remove [mqtt.tls]")

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
# Following an emulator's clock from another process
# ---------------------------------------------------------------------------------------------
class ClockFollower(MqttEndpoint):
    """Reads the emulator's retained clock anchor (:data:`pems.live.clock.TIME_TOPIC`).

    A loop in another process than ``pems emulate`` builds its clock from the anchor (same start,
    speed and epoch): :meth:`follow` returns that clock, still listening, so that an emulator that
    stops, dies or restarts is a fault of the loop (:class:`FollowedClock`), not a clock that runs on
    alone.
    """

    _id_prefix = "pems-clock"

    def __init__(self, host: str, port: int, **options: Any) -> None:
        super().__init__(host, port, **options)
        self._anchor: Any = None
        self._got = threading.Event()  # any anchor
        self._got_running = threading.Event()  # an anchor that says running

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
        if self._anchor.running:
            self._got_running.set()

    @property
    def latest(self) -> Any:
        """The last anchor received (None: none yet)."""
        return self._anchor

    def _first_anchor(self, timeout_s: float, running: bool) -> Any:
        self.connect()
        if (self._got_running if running else self._got).wait(timeout_s):
            return self._anchor
        self.close()
        last = self._anchor
        if last is not None:  # only the retained anchor of an emulator that has ended
            raise MqttConnectError(f"the emulator on {self.where} has stopped: its clock, last announced at "
                                   f"{last.time.isoformat()}, says running: false, and no running one came "
                                   f"within {timeout_s:g} s (start `pems emulate` against this broker first)")
        raise MqttConnectError(f"no emulator clock on {self.where} within {timeout_s:g} s "
                               "(is `pems emulate` running against this broker?)")

    def anchor(self, timeout_s: float = 10.0) -> Any:
        """The emulator's :class:`~pems.live.clock.ClockAnchor` as the broker holds it (running or
        not); ``MqttConnectError`` if none comes."""
        try:
            return self._first_anchor(timeout_s, running=False)
        finally:
            self.close()

    def follow(self, stale_s: float, timeout_s: float = 10.0) -> FollowedClock:
        """The emulator's clock, followed.

        The clock is built from the first anchor that says the emulator is running: a retained
        ``running: false`` is what an emulator that has ended left on the broker, so the follower
        waits for the next one rather than following (and at once faulting on) a clock that is over.

        Raises
        ------
        MqttConnectError
            No running clock within ``timeout_s`` [s] (the message says whether a stopped one was seen).
        """
        return FollowedClock(self, self._first_anchor(timeout_s, running=True), stale_s)


class FollowedClock(SimClock):
    """A :class:`~pems.live.clock.SimClock` on the emulator's anchor that keeps listening to it.

    :meth:`fault` (a :class:`~pems.live.clock.Followed` clock: the loop's watchdog asks every tick)
    names what makes the clock untrustworthy: the emulator said it stopped; its announcements are
    older than ``stale_s`` of its time (it was killed: the retained anchor still says "running"); or
    it restarted with another start, speed or epoch (the loop would run on a clock of its own).

    Parameters
    ----------
    follower
        The connected :class:`ClockFollower` (closed by :meth:`close`).
    anchor
        The first anchor received.
    stale_s
        Longest silence of the emulator's clock [simulated s] (it announces at every republish).
    """

    def __init__(self, follower: ClockFollower, anchor: Any, stale_s: float) -> None:
        if anchor.speed is None or anchor.epoch is None:
            raise ValueError("the emulator runs on a manual clock: there is no wall-clock anchor to follow")
        super().__init__(anchor.start, anchor.speed, anchor.epoch)
        self.follower, self.first, self.stale_s = follower, anchor, float(stale_s)

    def fault(self) -> str | None:
        a, f = self.follower.latest, self.first
        if a is None:
            return None
        if not a.running:
            return "clock: the emulator has stopped (its clock says running: false)"
        if a.start != f.start or a.speed != f.speed or a.epoch is None or abs(a.epoch - f.epoch) > 1.0:
            return "clock: the emulator's clock was restarted or changed; restart the loop to follow it"
        age = (self.now() - a.time).total_seconds()
        if age > self.stale_s:
            return (f"clock: the emulator last announced its time {age:.0f} s ago (limit {self.stale_s:.0f} s); "
                    "is `pems emulate` still running?")
        return None

    def close(self) -> None:
        self.follower.close()
