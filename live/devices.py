"""The small device interfaces the live loop talks to, and what flows through them.

Two devices make a Loxone + Growatt home: the **room bus** (Loxone over MQTT: room temperatures and
relay states in, heating relay commands out) and the **inverter** (Growatt over Modbus TCP: PV,
battery, grid and load measurements in, battery priority/power commands out). Each adapter module
implements one of the protocols below; the emulator serves the same protocols from the twin, so the
loop cannot tell an emulated home from a real one.

Conventions: times are tz-aware UTC; temperatures °C; powers W; SOC 0–1. A value that was never
received, or is not finite, is ``nan``; ``age_s`` says how old each value is (the watchdog's input).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

import pandas as pd

#: "pems": the loop switches the relays; "home": the home's own thermostats do (safe fallback).
HeatingMode = Literal["pems", "home"]
#: Growatt's energy priority: load first (the inverter's own logic), battery first, grid first.
Priority = Literal["load_first", "battery_first", "grid_first"]


@dataclass(frozen=True)
class RoomReadings:
    """What the room bus last received."""

    time: pd.Timestamp  # when this snapshot was taken (UTC)
    T_room: dict[str, float]  # room id → air temperature [°C] (nan if never received)
    relay: dict[str, float]  # room id → relay state 0/1 as last reported (nan if unknown)
    T_out: float = float("nan")  # outdoor sensor [°C]
    age_s: dict[str, float] = field(default_factory=dict)  # topic key → seconds since last update
    connected: bool = True
    gateway_online: bool | None = None  # what the gateway's status topic says (None: nothing, or no such topic)


@dataclass(frozen=True)
class InverterReadings:
    """One read of the inverter's input registers, scaled to SI units."""

    time: pd.Timestamp
    P_pv: float  # [W] (all strings)
    soc: float  # [0–1]
    P_charge: float  # battery charge power [W] ≥ 0
    P_discharge: float  # battery discharge power [W] ≥ 0
    P_import: float  # from the grid [W] ≥ 0
    P_export: float  # to the grid [W] ≥ 0
    P_load: float  # the house's consumption as the inverter meters it [W]
    priority: Priority | None = None  # as read back from the holding registers
    ok: bool = True  # False: the read failed (values are nan)
    # settings found changed since the last read without PEMS writing them (the Growatt app, a
    # reboot): "name: old → new" each
    changed: tuple[str, ...] = ()
    # the inverter's clock minus the true local time [s] (its slots run on it); nan: not read
    clock_offset_s: float = float("nan")


@dataclass(frozen=True)
class BatteryCommand:
    """What the loop asks of the inverter for the coming control step.

    ``load_first`` with ``remote=False`` is the inverter's own logic (charge from PV surplus,
    discharge to cover the load): the safe state. ``battery_first`` charges at ``power_pct`` of the
    battery's rating up to ``soc_limit`` (from the grid too when ``ac_charge``); ``grid_first``
    discharges at ``power_pct`` down to ``soc_limit``.
    """

    priority: Priority = "load_first"
    power_pct: float = 100.0  # [0–100] % of the rated charge/discharge power
    soc_limit: float = 1.0  # stop SOC [0–1]: charge up to / discharge down to
    ac_charge: bool = False
    until: pd.Timestamp | None = None  # the time slot ends here (UTC); None: no slot (load first)


@dataclass(frozen=True)
class WriteRecord:
    """One register or topic write, as sent or as refused (the events log keeps every one)."""

    time: pd.Timestamp
    device: str  # "growatt", "loxone"
    target: str  # register name / topic
    value: float | str
    sent: bool
    reason: str = ""  # why it was refused or skipped


class RoomBus(Protocol):
    """Loxone (or any room controller) as the loop sees it."""

    rooms: tuple[str, ...]

    def connect(self) -> None: ...

    def close(self) -> None: ...

    def read(self) -> RoomReadings:
        """The latest values received (never blocks on the network)."""
        ...

    def set_relays(self, on: dict[str, bool]) -> list[WriteRecord]:
        """Switch heating relays (only in ``pems`` mode)."""
        ...

    def set_mode(self, mode: HeatingMode) -> list[WriteRecord]:
        """``home`` hands the rooms back to their own thermostats."""
        ...

    connections: int
    """Connections made so far (a new one: the loop sends its mode again)."""

    def modes(self) -> dict[str, HeatingMode | None]:
        """The mode each room reports (None: not reported)."""
        ...

    def heartbeat(self, now: pd.Timestamp) -> bool:
        """Say the loop works (the home's own logic takes its rooms back when this stops)."""
        ...

    def announce_online(self) -> bool:
        """Say the loop is online (after its first fresh commands); True when said."""
        ...

    def announce_problem(self, text: str) -> WriteRecord | None:
        """Show the loop's trouble (``""``: none any more) where the home can show it."""
        ...


class Inverter(Protocol):
    """A hybrid inverter with a battery as the loop sees it."""

    def connect(self) -> None: ...

    def close(self) -> None: ...

    def read(self) -> InverterReadings: ...

    def command(self, cmd: BatteryCommand) -> list[WriteRecord]:
        """Write the registers that realise ``cmd`` (guarded: allow-list, ranges, rate limit,
        unchanged values not rewritten)."""
        ...

    def release(self) -> list[WriteRecord]:
        """Back to the inverter's own settings (:attr:`baseline`), or, without one, to load first with
        every remote slot cleared (the safe state)."""
        ...

    def settings(self) -> dict[str, float] | None:
        """What the inverter's writable settings hold now (None: not known, e.g. not connected)."""
        ...

    baseline: dict[str, float] | None
    """The owner's own settings, restored by :meth:`release` (None: release to the safe state)."""
