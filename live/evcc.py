"""The car's charger through evcc's MQTT interface: the loop's side of one loadpoint.

PEMS does not talk to wallboxes: `evcc <https://evcc.io>`_ does, and PEMS steers evcc. The topics are
evcc's documented MQTT API (``docs.evcc.io/docs/integrations/mqtt-api``), as evcc 0.200 and later
publish them; every loadpoint is numbered from 1:

=========================================  ==========================================================
``evcc/status``                            ``online`` / ``offline`` (evcc's own last will)
``evcc/loadpoints/<n>/connected``          a car is plugged in (``true``/``false``)
``evcc/loadpoints/<n>/charging``           it is charging
``evcc/loadpoints/<n>/chargePower``        charging power [W]
``evcc/loadpoints/<n>/vehicleSoc``         the car's state of charge [%] (when evcc can read it)
``evcc/loadpoints/<n>/mode``               ``off`` / ``now`` / ``minpv`` / ``pv``
``evcc/loadpoints/<n>/phasesActive``       phases in use
``evcc/loadpoints/<n>/maxCurrent``         current limit per phase [A]
=========================================  ==========================================================

Commands go to ``…/mode/set``, ``…/maxCurrent/set`` and ``…/phases/set`` (0: automatic 1p3p; 1; 3),
never retained: evcc must not apply an old command again after its restart. Each step :meth:`EvccLoadpoint.command` realises a power the
charger can give (:meth:`pems.twin.ev.Charger.setting`): ``mode = off`` for none, else ``phases``,
``maxCurrent`` and ``mode = now`` (evcc charges at ``maxCurrent`` in ``now``).

Hand-back: :meth:`EvccLoadpoint.release` sets the mode the owner configured evcc to run by itself
(``pv`` or ``minpv``), the wallbox's current limit as the house file declares it (``max_current_a``)
and, where it switches phases, automatic phases: whoever changed them last (a loop before a crash).
The loop sends it on every fault, as it hands back the rooms and the inverter, and again at every
inner tick until it went out (a broker that was down gets it as soon as it is back). The client's
**last will** is the same mode on the same topic: if the loop dies, or its network does, the broker
itself hands the car back to evcc.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import pandas as pd
import paho.mqtt.client as mqtt

from pems.live.devices import WriteRecord
from pems.live.loxone import ValueStore
from pems.live.mqtt import MqttEndpoint
from pems.twin.ev import Charger

log = logging.getLogger(__name__)

DEVICE = "evcc"
#: evcc's charge modes (``off``: no charging; ``now``: at the current limit; ``minpv``: the minimum
#: current plus PV surplus; ``pv``: PV surplus only).
EvccMode = Literal["off", "now", "minpv", "pv"]
MODES: tuple[str, ...] = ("off", "now", "minpv", "pv")
#: The modes evcc may be handed back to (its own logic).
HANDBACK_MODES: tuple[str, ...] = ("pv", "minpv")
#: The loadpoint topics read (below ``<prefix>/loadpoints/<n>/``).
STATE_TOPICS: tuple[str, ...] = ("connected", "charging", "chargePower", "vehicleSoc", "mode", "phasesActive",
                                 "maxCurrent")


@dataclass(frozen=True)
class EvccReadings:
    """What one loadpoint last reported."""

    time: pd.Timestamp
    plugged: bool | None  # a car is connected (None: not reported yet)
    charging: bool | None
    power_w: float  # charging power [W] (nan: not reported)
    soc: float  # the car's state of charge [0–1] (nan: not reported)
    mode: str | None
    phases_active: float  # [–] (nan: not reported)
    max_current_a: float  # [A] (nan: not reported)
    evcc_online: bool | None  # what evcc's status topic says (None: nothing yet)
    connected: bool  # the MQTT session to the broker is up
    age_s: float  # seconds since the last fresh state message of this loadpoint (inf: none yet)


def reported_soc(r: EvccReadings) -> float:
    """The car's state of charge [0–1] as evcc reports it, when it can be believed: only while the car
    is plugged in and evcc is online (evcc says 0 % when it has no vehicle). NaN otherwise."""
    return r.soc if (r.plugged and r.evcc_online is not False and r.soc > 0) else math.nan


def _bool(payload: bytes) -> bool | None:
    t = payload.decode("utf-8", "replace").strip().lower()
    return True if t in ("true", "1", "on") else False if t in ("false", "0", "off") else None


def _num(payload: bytes) -> float:
    try:
        v = float(payload.decode("utf-8", "replace").strip())
    except ValueError:
        return math.nan
    return v if math.isfinite(v) else math.nan


def _fmt(v: float) -> str:
    """A number as evcc's topics carry it (no trailing zeros)."""
    return f"{v:.2f}".rstrip("0").rstrip(".") if not float(v).is_integer() else str(int(v))


class EvccLoadpoint(MqttEndpoint):
    """One evcc loadpoint as the loop sees it (see the module notes).

    Parameters
    ----------
    host, port
        The broker evcc publishes to.
    loadpoint
        evcc's loadpoint number (from 1).
    charger
        The car's charger as the house file declares it (phases, currents: what is commanded).
    prefix
        evcc's MQTT topic prefix (evcc's ``mqtt.topic``; default ``evcc``).
    handback_mode
        The mode evcc runs the car in by itself (``pv`` or ``minpv``): what a fault hands back to.
    dry_run
        Publish nothing (every write is recorded as ``dry-run``).
    clock
        Monotonic clock [s] of the ages (the loop's, which may be accelerated).
    options
        Passed to :class:`~pems.live.mqtt.MqttEndpoint` (credentials, TLS, client id, keepalive ...).
    """

    _id_prefix = "pems-evcc"

    def __init__(self, host: str, port: int, loadpoint: int, charger: Charger, *, prefix: str = "evcc",
                 handback_mode: str = "pv", dry_run: bool = False, clock: Callable[[], float] = time.monotonic,
                 qos: int = 1, **options: Any) -> None:
        if handback_mode not in HANDBACK_MODES:
            raise ValueError(f"handback_mode must be one of {', '.join(HANDBACK_MODES)}, got {handback_mode!r}")
        if int(loadpoint) < 1:
            raise ValueError(f"evcc loadpoints are numbered from 1, got {loadpoint}")
        self.loadpoint, self.charger, self.prefix = int(loadpoint), charger, prefix.strip("/")
        self.base = f"{self.prefix}/loadpoints/{self.loadpoint}"
        self.handback_mode, self.dry_run, self.qos = handback_mode, bool(dry_run), int(qos)
        # if the loop (or its network) dies, the broker hands the car back to evcc by itself
        will = None if dry_run else (f"{self.base}/mode/set", handback_mode, self.qos, False)
        super().__init__(host, port, will=will, **options)
        self.values = ValueStore(clock)
        self._phases: int | None = None  # the phases last commanded (kept while they can give the power)
        self._clock = clock
        self._last_state = -math.inf  # monotonic time of the last fresh state message

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port} {self.base}"

    # -- reading ---------------------------------------------------------------------------------
    def read(self) -> EvccReadings:
        """The latest values received (never blocks on the network)."""
        v = self.values
        soc = v.get("vehicleSoc")
        age = self._clock() - self._last_state
        return EvccReadings(time=pd.Timestamp.now(tz="UTC"), plugged=v.get("connected", None),
                            charging=v.get("charging", None), power_w=float(v.get("chargePower")),
                            soc=float(soc) / 100.0 if math.isfinite(soc) else math.nan, mode=v.get("mode", None),
                            phases_active=float(v.get("phasesActive")), max_current_a=float(v.get("maxCurrent")),
                            evcc_online=v.get("status", None), connected=self.connected, age_s=max(age, 0.0))

    # -- commanding ------------------------------------------------------------------------------
    def command(self, power_w: float) -> list[WriteRecord]:
        """Charge at ``power_w`` [W] (made feasible by the charger): ``off``, or ``now`` at the phases
        and current that give it."""
        now = pd.Timestamp.now(tz="UTC")
        phases, amps = self.charger.setting(power_w, self._phases)
        if amps <= 0:
            return [self._publish(now, "mode", "off")]
        out = []
        if self.charger.phase_switching:
            out.append(self._publish(now, "phases", str(phases)))
            if out[-1].sent:
                self._phases = phases
        out.append(self._publish(now, "maxCurrent", _fmt(round(amps, 2))))  # evcc takes fractional amperes
        out.append(self._publish(now, "mode", "now"))
        return out

    def release(self) -> list[WriteRecord]:
        """evcc's own logic: the hand-back mode, the wallbox's own current limit and (where it
        switches phases) automatic phases, whoever set them last (a loop before a crash, too)."""
        now = pd.Timestamp.now(tz="UTC")
        self._phases = None
        out = [self._publish(now, "mode", self.handback_mode),
               self._publish(now, "maxCurrent", _fmt(self.charger.max_current_a))]
        if self.charger.phase_switching:
            out.append(self._publish(now, "phases", "0"))
        return out

    def _publish(self, now: pd.Timestamp, key: str, payload: str) -> WriteRecord:
        topic = f"{self.base}/{key}/set"
        if self.dry_run:
            return WriteRecord(now, DEVICE, topic, payload, False, "dry-run")
        client = self._client
        if client is None or not self.connected:
            # not queued: paho would replay it on reconnect, when it may no longer be wanted
            return WriteRecord(now, DEVICE, topic, payload, False, "not connected")
        info = client.publish(topic, payload, qos=self.qos, retain=False)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            return WriteRecord(now, DEVICE, topic, payload, False, f"publish failed: {mqtt.error_string(info.rc)}")
        return WriteRecord(now, DEVICE, topic, payload, True)

    # -- MQTT ------------------------------------------------------------------------------------
    def _subscriptions(self) -> list[tuple[str, int]]:
        return [(f"{self.base}/{k}", self.qos) for k in STATE_TOPICS] + [(f"{self.prefix}/status", self.qos)]

    def _handle(self, topic: str, payload: bytes, retained: bool) -> None:
        if topic == f"{self.prefix}/status":
            t = payload.decode("utf-8", "replace").strip().lower()
            self.values.set("status", True if t == "online" else False if t == "offline" else None, retained)
            return
        key = topic.rsplit("/", 1)[-1]
        if key in ("connected", "charging", "enabled"):
            value: Any = _bool(payload)
        elif key == "mode":
            m = payload.decode("utf-8", "replace").strip().lower()
            value = m if m in MODES else None
        else:
            value = _num(payload)
        self.values.set(key, value, retained)
        if not retained:
            self._last_state = self._clock()
