"""An evcc-like loadpoint on MQTT, for the emulator: what evcc publishes and what it does with ``/set``.

:class:`EvccSim` follows the MQTT API of evcc 0.200 and later (``docs.evcc.io/docs/integrations/mqtt-api``;
the topics are listed in :mod:`pems.live.evcc`): for each loadpoint it publishes, retained as evcc
does, ``connected``, ``charging``, ``chargePower``, ``vehicleSoc``, ``mode``, ``phasesActive``,
``phasesConfigured``, ``maxCurrent``, ``minCurrent`` and ``enabled``, and ``evcc/status`` = ``online`` (last will
``offline``); it takes ``mode/set``, ``maxCurrent/set``, ``minCurrent/set`` and ``phases/set``.

What it charges with (:meth:`EvccSim.power`), as evcc decides each cycle:

- ``off``: nothing;
- ``now``: the current limit on the phases configured (automatic: all the charger has);
- ``pv``: the PV surplus seen at the grid meter (export plus what the car draws already), at a power
  the charger can give, nothing below its minimum current;
- ``minpv``: the minimum current at least, and more from the surplus.

evcc's own enable/disable delays and thresholds are left out: the emulator's tick is a minute, and
those delays are of that order. When the broker goes away evcc keeps its last mode (it has no
watchdog on its MQTT commands): a loop that was charging a car in ``now`` must hand it back itself.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import paho.mqtt.client as mqtt

from pems.live.evcc import MODES, _fmt
from pems.live.mqtt import MqttEndpoint
from pems.twin.ev import Charger

log = logging.getLogger(__name__)


@dataclass
class LoadpointState:
    """One emulated loadpoint's settings (what ``/set`` changes)."""

    charger: Charger
    mode: str = "pv"
    max_current_a: float = 16.0
    min_current_a: float = 6.0
    phases: int = 0  # configured: 0 automatic (1p3p), 1 or 3
    published: dict[str, str] = field(default_factory=dict)  # topic key → last payload published


@dataclass(frozen=True)
class EvccCommand:
    """One ``/set`` the emulated evcc received."""

    time: pd.Timestamp  # arrival (UTC, wall clock)
    loadpoint: int
    key: str  # "mode", "maxCurrent", "minCurrent", "phases"
    value: str
    accepted: bool


class EvccSim(MqttEndpoint):
    """The emulated evcc (see the module notes).

    Parameters
    ----------
    host, port
        The broker.
    chargers
        Loadpoint number (from 1) → its charger.
    mode
        The mode each loadpoint starts in (evcc's configured default).
    prefix
        Topic prefix (evcc's ``mqtt.topic``).
    options
        Passed to :class:`~pems.live.mqtt.MqttEndpoint`.
    """

    _id_prefix = "pems-evcc-sim"

    def __init__(self, host: str, port: int, chargers: Mapping[int, Charger], *, mode: str = "pv",
                 prefix: str = "evcc", **options: Any) -> None:
        self.prefix = prefix.strip("/")
        super().__init__(host, port, will=(f"{self.prefix}/status", "offline", 1, True), **options)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        self.loadpoints = {int(n): LoadpointState(c, mode, c.max_current_a, c.min_current_a,
                                                  0 if c.phase_switching else c.phases)
                           for n, c in chargers.items()}
        self._lock = threading.Lock()
        self._commands: list[EvccCommand] = []

    # -- what the emulator asks ------------------------------------------------------------------
    def mode(self, n: int) -> str:
        with self._lock:
            return self.loadpoints[n].mode

    def commands(self, since: int = 0) -> list[EvccCommand]:
        """Every ``/set`` received from the ``since``-th on."""
        with self._lock:
            return self._commands[since:]

    def power(self, n: int, surplus_w: float) -> float:
        """What loadpoint ``n`` charges with now [W] (before the car's plug and fill), given the PV
        surplus at the grid meter (export plus the car's own draw) [W]."""
        with self._lock:
            lp = self.loadpoints[n]
            mode, amps, phases = lp.mode, lp.max_current_a, lp.phases
        c = lp.charger
        if mode == "off":
            return 0.0
        if mode == "now":
            return c.feasible((phases or (3 if c.phase_switching else c.phases)) * c.voltage_v * amps)
        limit = c.feasible((phases or 3) * c.voltage_v * amps)  # the current limit caps the surplus too
        pv = c.feasible(min(max(surplus_w, 0.0), limit))
        return max(pv, c.min_w) if mode == "minpv" else pv

    def publish_state(self, n: int, plugged: bool, power_w: float, soc: float) -> None:
        """The loadpoint's state (retained), only what changed since it was last published."""
        client = self._client
        if client is None or not self.connected:
            return
        with self._lock:
            lp = self.loadpoints[n]
            c = lp.charger
            if power_w <= 0:
                phases_active = 0
            elif c.phase_switching:
                phases_active = 1 if lp.phases != 3 and power_w <= c.voltage_v * c.max_current_a + 1e-6 else 3
            else:
                phases_active = c.phases
            values = {"connected": "true" if plugged else "false", "charging": "true" if power_w > 0 else "false",
                      "chargePower": _fmt(round(power_w, 1)), "vehicleSoc": _fmt(round(100.0 * soc, 1)),
                      "mode": lp.mode, "phasesActive": str(phases_active), "phasesConfigured": str(lp.phases),
                      "maxCurrent": _fmt(lp.max_current_a), "minCurrent": _fmt(lp.min_current_a),
                      "enabled": "true" if power_w > 0 else "false"}
            new = {k: v for k, v in values.items() if lp.published.get(k) != v}
            lp.published.update(new)
        for k, v in new.items():
            client.publish(f"{self.prefix}/loadpoints/{n}/{k}", v, qos=1, retain=True)

    # -- MQTT ------------------------------------------------------------------------------------
    def _subscriptions(self) -> list[tuple[str, int]]:
        return [(f"{self.prefix}/loadpoints/+/+/set", 1)]

    def _on_connected(self, client: mqtt.Client) -> None:
        client.publish(f"{self.prefix}/status", "online", qos=1, retain=True)
        client.publish(f"{self.prefix}/loadpoints", str(len(self.loadpoints)), qos=1, retain=True)
        with self._lock:  # the broker may have lost everything: publish it all again
            for lp in self.loadpoints.values():
                lp.published.clear()

    def _before_close(self, client: mqtt.Client) -> None:
        if self.connected:
            client.publish(f"{self.prefix}/status", "offline", qos=1, retain=True)

    def _handle(self, topic: str, payload: bytes, retained: bool) -> None:
        parts = topic.split("/")
        if len(parts) != 5 or parts[-1] != "set" or not parts[2].isdigit():
            return
        n, key = int(parts[2]), parts[3]
        text = payload.decode("utf-8", "replace").strip()
        ok = False
        with self._lock:
            lp = self.loadpoints.get(n)
            if lp is not None:
                ok = self._apply(lp, key, text)
            self._commands.append(EvccCommand(pd.Timestamp.now(tz="UTC"), n, key, text, ok))
        if not ok:
            log.warning("emulated evcc: %s = %r refused", topic, text)

    @staticmethod
    def _apply(lp: LoadpointState, key: str, text: str) -> bool:
        c = lp.charger
        if key == "mode":
            if text.lower() not in MODES:
                return False
            lp.mode = text.lower()
            return True
        try:
            v = float(text)
        except ValueError:
            return False
        if not math.isfinite(v):
            return False
        if key == "maxCurrent":  # evcc keeps it within the charger's range and above minCurrent
            lp.max_current_a = min(max(v, lp.min_current_a), c.max_current_a)
        elif key == "minCurrent":
            lp.min_current_a = min(max(v, c.min_current_a), lp.max_current_a)
        elif key == "phases" and int(v) in (0, 1, 3) and (c.phase_switching or int(v) in (0, c.phases)):
            lp.phases = int(v)
        else:
            return False
        return True
