"""Modbus register maps as data: load, validate, scale, encode, and read the inverter's control state.

A register map is a TOML file (built-in maps live in ``live/maps/``: ``growatt-sph`` for the SPH
storage inverters, 1000-range; ``growatt-mod-xh`` for MOD/MIN TL-XH, 3000-range)::

    [device]
    name = "growatt-sph"
    title = "Growatt SPH 3000–10000 (storage type SPH)"
    scheme = "sph"                 # how battery control is laid out: "sph" or "tlxh" (below)
    sources = ["Growatt Inverter Modbus RTU Protocol V1.24, storage holding registers 1000–1124"]

    [registers.soc]                # the name the adapter and the emulator use
    address = 1014
    table = "input"                # input (function 04, read-only) | holding (03 read, 06/16 write)
    words = 1                      # 1, or 2 for 32-bit values (high word first, as Growatt sends them)
    scale = 0.01                   # engineering value = raw × scale  (here % → 0–1)
    unit = "1"
    signed = false                 # two's complement over all the words

    [registers.bat_first_stop_soc]
    address = 1091
    table = "holding"
    writable = true                # on the allow-list; needs `range` or `values` (engineering units)
    range = [10, 100]
    unit = "%"

    [registers.bat_first_slot1_start]
    address = 1100
    table = "holding"
    writable = true
    encoding = "time_hm"           # uint (default) | time_hm | tlxh_slot_start (below)
    range = [0, 5947]

Encodings (both found in the open-source Growatt integrations, see the map files for the sources):

- ``time_hm``: a time of day as ``hour × 256 + minute`` (high byte hour 0–23, low byte minute 0–59).
- ``tlxh_slot_start``: the TL-XH "Time N start" word: bit 15 = slot enabled, bits 13–14 = priority
  in the slot (0 load first, 1 battery first, 2 grid first), bits 8–12 hour, bits 0–7 minute.

Schemes name the registers the adapter writes:

- ``sph``: a ``priority`` register (0 load, 1 battery, 2 grid first); ``bat_first_rate``,
  ``bat_first_stop_soc``, ``ac_charge``, ``grid_first_rate``, ``grid_first_stop_soc``; slots
  ``bat_first_slot<N>_{start,end,enable}`` and ``grid_first_slot<N>_{start,end,enable}``.
- ``tlxh``: no priority register (the priority rides in each slot's start word); the same rate,
  stop-SOC and AC-charge registers; slots ``slot<N>_start`` (``tlxh_slot_start``) and
  ``slot<N>_end`` (``time_hm``).

Every map also has the measurements ``P_pv``, ``soc``, ``P_charge``, ``P_discharge``, ``P_import``,
``P_export`` and ``P_load`` as input registers. A bad file raises :class:`pems.errors.InputError`
naming the file, the key and what was expected.
"""

from __future__ import annotations

import functools
import math
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pems.errors import InputError, Problem
from pems.live.devices import Priority
from pems.tomlio import builtin_or_file, read_toml, validate

Table = Literal["input", "holding"]
Encoding = Literal["uint", "time_hm", "tlxh_slot_start"]
Scheme = Literal["sph", "tlxh"]

#: Growatt's priority codes (holding 1044 on the SPH, bits 13–14 of a TL-XH slot start word).
PRIORITY_CODES: dict[Priority, int] = {"load_first": 0, "battery_first": 1, "grid_first": 2}
PRIORITY_NAMES: dict[int, Priority] = {v: k for k, v in PRIORITY_CODES.items()}

#: The measurements every map must provide (input registers), named as in ``InverterReadings``.
MEASUREMENTS = ("P_pv", "soc", "P_charge", "P_discharge", "P_import", "P_export", "P_load")
#: Control registers every scheme needs besides its slots.
CONTROLS = ("bat_first_rate", "bat_first_stop_soc", "ac_charge", "grid_first_rate", "grid_first_stop_soc")

NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: The last minute a slot can end at: Growatt slots live within one day, so "to midnight" is 23:59.
END_OF_DAY_MIN = 23 * 60 + 59


# ----------------------------------------------------------------------------- time-word codecs
def encode_hm(hour: int, minute: int) -> int:
    """A time of day as Growatt stores it: ``hour × 256 + minute``."""
    if not (0 <= hour <= 23 and 0 <= minute <= 59):
        raise ValueError(f"not a time of day: {hour}:{minute}")
    return (hour << 8) | minute


def decode_hm(word: int) -> tuple[int, int]:
    """``(hour, minute)`` of a ``time_hm`` word (the TL-XH flag bits above bit 12 are ignored)."""
    return (word >> 8) & 0x1F, word & 0xFF


def encode_slot_start(enabled: bool, priority: Priority, hour: int, minute: int) -> int:
    """The TL-XH slot start word: bit 15 enable, bits 13–14 priority, then ``time_hm``."""
    return (int(bool(enabled)) << 15) | (PRIORITY_CODES[priority] << 13) | encode_hm(hour, minute)


def decode_slot_start(word: int) -> tuple[bool, int, int, int]:
    """``(enabled, priority code, hour, minute)`` of a TL-XH slot start word."""
    hour, minute = decode_hm(word)
    return bool(word >> 15 & 1), (word >> 13) & 0b11, hour, minute


def _encoding_problem(encoding: Encoding, raw: int) -> str | None:
    """Why ``raw`` is not a valid word of ``encoding`` (None when it is)."""
    if encoding == "time_hm":
        if raw >> 13:
            return f"{raw} is not a time word (hour × 256 + minute)"
        hour, minute = decode_hm(raw)
        if hour > 23 or minute > 59:
            return f"{raw} is not a time of day (hour {hour}, minute {minute})"
    elif encoding == "tlxh_slot_start":
        _, prio, hour, minute = decode_slot_start(raw)
        if prio not in PRIORITY_NAMES:
            return f"{raw} has priority code {prio} in bits 13–14 (expected 0, 1 or 2)"
        if hour > 23 or minute > 59:
            return f"{raw} is not a time of day in bits 0–12 (hour {hour}, minute {minute})"
    return None


# ----------------------------------------------------------------------------- one register
class Register(BaseModel):
    """One register (or 32-bit pair) of a map, with its scaling and, if writable, its limits."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    name: str = ""
    """Filled in from the table's key; leave it out."""
    address: int = Field(ge=0, le=65535)
    """Register address (of the high word for 32-bit values)."""
    table: Table
    """``input`` (function 04, read-only) or ``holding`` (03 read, 06/16 write)."""
    words: Literal[1, 2] = 1
    """1, or 2 for a 32-bit value (high word first, as Growatt sends them)."""
    scale: float = 1.0
    """Engineering value = raw × scale, e.g. 0.1 for a power in 0.1 W; positive."""
    unit: str = ""
    """Unit of the engineering value, e.g. ``W`` or ``%``."""
    signed: bool = False
    """Two's complement over all the words."""
    writable: bool = False
    """On the allow-list of writes (holding registers only); needs ``range`` or ``values``."""
    range: tuple[float, float] | None = None
    """Allowed written values ``[low, high]``, inclusive, in engineering units."""
    values: tuple[float, ...] | None = None
    """Or: the allowed written values, in engineering units."""
    encoding: Encoding = "uint"
    """``uint``, ``time_hm`` (hour × 256 + minute) or ``tlxh_slot_start`` (enable bit, priority and time in one word); not ``uint`` needs ``words = 1``, ``scale = 1``, unsigned."""
    default: float | None = None
    """The factory value an emulated inverter starts with, in engineering units."""
    description: str = ""
    """What the register holds."""

    @field_validator("scale")
    @classmethod
    def _scale(cls, v: float) -> float:
        if not (math.isfinite(v) and v > 0):
            raise ValueError(f"scale must be a positive number, got {v!r}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> Register:
        if self.address + self.words - 1 > 65535:
            raise ValueError("address + words runs past register 65535")
        if self.writable and self.table != "holding":
            raise ValueError("only holding registers can be writable")
        if self.writable and self.range is None and self.values is None:
            raise ValueError("a writable register needs `range` or `values` (the allow-list's limits)")
        if not self.writable and (self.range is not None or self.values is not None):
            raise ValueError("`range`/`values` are the limits of writes: set `writable = true` or drop them")
        if self.range is not None:
            lo, hi = self.range
            if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
                raise ValueError(f"range must be [low, high] with low <= high, got {list(self.range)}")
            for v in (lo, hi):
                self._check_representable(v)
        if self.values is not None:
            if not self.values:
                raise ValueError("values must not be empty")
            for v in self.values:
                self._check_representable(v)
        if self.default is not None:
            self._check_representable(self.default)
        if self.encoding != "uint" and (self.words != 1 or self.scale != 1.0 or self.signed):
            raise ValueError(f"encoding {self.encoding!r} needs words = 1, scale = 1, signed = false")
        return self

    # -- raw limits
    @property
    def raw_min(self) -> int:
        return -(1 << (16 * self.words - 1)) if self.signed else 0

    @property
    def raw_max(self) -> int:
        bits = 16 * self.words
        return (1 << (bits - 1)) - 1 if self.signed else (1 << bits) - 1

    def _check_representable(self, value: float) -> None:
        raw = round(value / self.scale)
        if not (self.raw_min <= raw <= self.raw_max):
            raise ValueError(f"{value} {self.unit} does not fit the register (raw {raw} outside "
                             f"{self.raw_min}…{self.raw_max})")

    # -- codecs
    def decode(self, words: Sequence[int]) -> float:
        """Engineering value of the raw words (high word first) [``unit``]."""
        if len(words) != self.words:
            raise ValueError(f"{self.name}: expected {self.words} words, got {len(words)}")
        raw = 0
        for w in words:
            raw = (raw << 16) | (int(w) & 0xFFFF)
        if self.signed and raw >> (16 * self.words - 1):
            raw -= 1 << (16 * self.words)
        # round away the binary noise of e.g. -53 × 0.1 (registers carry at most a few decimals)
        return round(raw * self.scale, 9)

    def to_raw(self, value: float) -> int:
        """The integer the register holds for ``value`` (rounded to the register's resolution)."""
        if not math.isfinite(value):
            raise ValueError(f"{self.name}: {value} is not a finite number")
        raw = round(value / self.scale)
        if not (self.raw_min <= raw <= self.raw_max):
            raise ValueError(f"{self.name}: {value} {self.unit} is outside what the register holds")
        return raw

    def encode(self, value: float) -> list[int]:
        """Raw words (high word first) for ``value`` [``unit``]."""
        raw = self.to_raw(value)
        if raw < 0:
            raw += 1 << (16 * self.words)
        return [(raw >> (16 * (self.words - 1 - i))) & 0xFFFF for i in range(self.words)]

    def quantize(self, value: float) -> float:
        """``value`` at the register's resolution (what reads back after writing it)."""
        return round(self.to_raw(value) * self.scale, 9)

    def refusal(self, value: float) -> str | None:
        """Why writing ``value`` is not allowed (None when it is): allow-list, range, encoding."""
        if not self.writable:
            return f"{self.name} ({self.table} {self.address}) is not on the allow-list of writable registers"
        try:
            q = self.quantize(float(value))
        except (TypeError, ValueError) as exc:
            return str(exc)
        if self.range is not None and not (self.range[0] <= q <= self.range[1]):
            return f"{self.name} = {q:g} {self.unit} is outside the allowed range [{self.range[0]:g}, {self.range[1]:g}]"
        if self.values is not None and not any(math.isclose(q, v, abs_tol=self.scale / 2) for v in self.values):
            return f"{self.name} = {q:g} is not one of the allowed values {[float(v) for v in self.values]}"
        return _encoding_problem(self.encoding, self.to_raw(q))


class DeviceInfo(BaseModel):
    """The ``[device]`` table: what the map is for and where its registers were found."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    name: str
    """The map's name."""
    title: str = ""
    """The inverters it is for."""
    scheme: Scheme
    """How battery control is laid out: ``sph`` (a priority register and slot registers) or ``tlxh`` (the priority in each slot's start word)."""
    sources: list[str] = Field(default_factory=list)
    """Where the registers were found (protocol documents, integrations)."""
    notes: str = ""
    """Anything a user of the map should know."""
    max_read: int = Field(default=100, ge=1, le=125)
    """Longest read request: Growatt answers at most 125 registers per request and only within one
    of its 125-register ranges, so reads are grouped into blocks no longer than this [registers]."""


class _MapFile(BaseModel):
    """A whole register-map file."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    device: DeviceInfo
    """What the map is for."""
    registers: dict[str, Register]
    """The registers by name: the measurements and, per scheme, the control registers."""


# ----------------------------------------------------------------------------- the whole map
@dataclass(frozen=True)
class RegisterMap:
    """A validated register map: the registers by name, and what the map is for."""

    device: DeviceInfo
    registers: Mapping[str, Register]  # read-only: loaded maps are cached and shared
    source: str = ""  # the file it came from

    def __getitem__(self, name: str) -> Register:
        return self.registers[name]

    def __contains__(self, name: object) -> bool:
        return name in self.registers

    @property
    def name(self) -> str:
        return self.device.name

    @property
    def scheme(self) -> Scheme:
        return self.device.scheme

    def table(self, table: Table) -> list[Register]:
        """The registers of one table, by address."""
        return sorted((r for r in self.registers.values() if r.table == table), key=lambda r: r.address)

    def writable(self) -> list[Register]:
        """The allow-list: every register a command may write."""
        return [r for r in self.table("holding") if r.writable]

    def blocks(self, table: Table) -> list[tuple[int, int]]:
        """Read requests covering every register of ``table``: ``(first address, count)``.

        Neighbouring registers share a request when the gap between them is small (at most 16
        unused registers read along), never past ``device.max_read`` registers and never across a
        multiple of 125: Growatt serves its registers in 125-register ranges (0–124, 1000–1124,
        3000–3124, 3125–3249) and refuses a request that spans two.
        """
        out: list[tuple[int, int]] = []
        for r in self.table(table):
            end = r.address + r.words
            if out:
                start, count = out[-1]
                if (r.address - (start + count) <= 16 and end - start <= self.device.max_read
                        and start // 125 == (end - 1) // 125):
                    out[-1] = (start, max(count, end - start))
                    continue
            out.append((r.address, r.words))
        return out

    def decode_block(self, table: Table, start: int, words: Sequence[int]) -> dict[str, float]:
        """Engineering values of the registers of ``table`` inside a block read at ``start``."""
        out = {}
        for r in self.table(table):
            i = r.address - start
            if 0 <= i and i + r.words <= len(words):
                out[r.name] = r.decode(words[i:i + r.words])
        return out

    def slot_count(self, mode: Priority | None = None) -> int:
        """How many time slots the map has (per mode for the ``sph`` scheme)."""
        prefix = "slot" if self.scheme == "tlxh" else f"{'bat' if mode == 'battery_first' else 'grid'}_first_slot"
        n = 0
        while f"{prefix}{n + 1}_start" in self.registers:
            n += 1
        return n


def _required(scheme: Scheme) -> list[tuple[str, Table]]:
    req: list[tuple[str, Table]] = [(m, "input") for m in MEASUREMENTS]
    req += [(c, "holding") for c in CONTROLS]
    if scheme == "sph":
        req.append(("priority", "holding"))
        req += [(f"{p}_first_slot1_{part}", "holding") for p in ("bat", "grid") for part in ("start", "end", "enable")]
    else:
        req += [("slot1_start", "holding"), ("slot1_end", "holding")]
    return req


def _check_map(m: _MapFile, path: str | Path) -> list[Problem]:
    problems: list[Problem] = []
    src = str(path)
    for name, r in m.registers.items():
        if not NAME.match(name):
            problems.append(Problem(src, f"registers.{name}", "expected a name of letters, digits and _"))
    for name, table in _required(m.device.scheme):
        r = m.registers.get(name)
        if r is None:
            problems.append(Problem(src, f"registers.{name}", f"required by scheme {m.device.scheme!r} "
                                                              f"({table} register) but missing"))
        elif r.table != table:
            problems.append(Problem(src, f"registers.{name}.table", f"expected {table!r}"))
        elif table == "holding" and not r.writable:
            problems.append(Problem(src, f"registers.{name}.writable", "a control register must be writable"))
        elif name in CONTROLS and name != "ac_charge" and (r.unit != "%" or r.scale != 1.0):
            # the adapter writes percentages (power rate, stop SOC) as whole numbers
            problems.append(Problem(src, f"registers.{name}.unit", 'expected unit = "%" with scale = 1'))
    # slot registers: complete sets with the right encodings
    for name, r in m.registers.items():
        mt = re.fullmatch(r"(?:(bat|grid)_first_)?slot(\d+)_(start|end|enable)", name)
        if not mt:
            continue
        prefix = name[: name.rindex("_")]
        parts = ("start", "end", "enable") if m.device.scheme == "sph" else ("start", "end")
        for part in parts:
            if f"{prefix}_{part}" not in m.registers:
                problems.append(Problem(src, f"registers.{prefix}_{part}", f"slot {prefix} is incomplete"))
        want = {"end": "time_hm", "enable": "uint",
                "start": "tlxh_slot_start" if m.device.scheme == "tlxh" else "time_hm"}[mt.group(3)]
        if r.encoding != want:
            problems.append(Problem(src, f"registers.{name}.encoding", f"expected {want!r} for scheme {m.device.scheme!r}"))
    # no two registers of one table on the same address
    for table in ("input", "holding"):
        used: dict[int, str] = {}
        for name, r in m.registers.items():
            if r.table != table:
                continue
            for a in range(r.address, r.address + r.words):
                if a in used:
                    problems.append(Problem(src, f"registers.{name}.address",
                                            f"{table} register {a} is already used by {used[a]!r}"))
                used[a] = name
    return problems


def builtin_maps() -> tuple[str, ...]:
    """Names of the register maps shipped in ``live/maps/``.

    The folder also holds other devices' maps (MQTT topic maps); a register map is a file with a
    ``[device]`` table and ``[registers.*]`` tables.
    """
    folder = Path(str(resources.files("pems.live") / "maps"))
    return _builtin_maps(folder, tuple(sorted((p.name, p.stat().st_mtime_ns) for p in folder.glob("*.toml"))))


@functools.lru_cache(maxsize=8)
def _builtin_maps(folder: Path, listing: tuple[tuple[str, int], ...]) -> tuple[str, ...]:
    names = []
    for p in folder.glob("*.toml"):
        try:
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError):
            continue
        if isinstance(data.get("device"), dict) and isinstance(data.get("registers"), dict):
            names.append(p.stem)
    return tuple(sorted(names))


def load_map(spec: str | Path | RegisterMap) -> RegisterMap:
    """A built-in map by name (``growatt-sph``, ``growatt-mod-xh``) or a map TOML file.

    Raises
    ------
    InputError
        The file is missing or not TOML, a key is unknown or misspelt, a value is out of range, a
        register the scheme needs is missing, or two registers overlap.
    """
    if isinstance(spec, RegisterMap):
        return spec
    path = builtin_or_file(spec, Path(str(resources.files("pems.live") / "maps")), builtin_maps(),
                           "map", "register map", "built-in map")
    try:
        stamp = path.stat().st_mtime_ns
    except OSError:
        stamp = -1  # read_toml reports the missing file
    return _load_file(path, stamp)


@functools.lru_cache(maxsize=32)
def _load_file(path: Path, stamp: int) -> RegisterMap:
    """Parse and check one map file (cached per file version: emulators load maps every step)."""
    m = validate(_MapFile, read_toml(path), path)
    problems = _check_map(m, path)
    if problems:
        raise InputError.many(problems)
    regs = {name: r.model_copy(update={"name": name}) for name, r in m.registers.items()}
    return RegisterMap(device=m.device, registers=MappingProxyType(regs), source=str(path))


# ----------------------------------------------------------------------------- control state
@dataclass(frozen=True)
class Slot:
    """One time slot as the inverter holds it (times in the inverter's local clock)."""

    priority: Priority
    start_min: int  # minutes after local midnight
    end_min: int  # exclusive; 23:59 stands for midnight (the latest a Growatt slot can end)
    enabled: bool

    def covers(self, minute_of_day: float) -> bool:
        """Whether the slot is in force at ``minute_of_day`` (local, fractional minutes)."""
        end = 24 * 60 if self.end_min >= END_OF_DAY_MIN else self.end_min
        return self.enabled and self.start_min <= minute_of_day < end


@dataclass(frozen=True)
class ControlState:
    """The battery control registers decoded: what the inverter has been told to do."""

    priority: Priority | None  # the priority register (sph); None where the map has none (tlxh)
    slots: tuple[Slot, ...] = ()
    bat_first_rate_pct: float = 100.0  # [%] of the rated charge power
    bat_first_stop_soc: float = 1.0  # [0–1]
    ac_charge: bool = False
    grid_first_rate_pct: float = 100.0  # [%] of the rated discharge power
    grid_first_stop_soc: float = 0.1  # [0–1]
    extra: dict[str, float] = field(default_factory=dict)

    def mode_at(self, minute_of_day: float) -> Priority:
        """The priority in force at a local time: a battery-first slot wins over a grid-first one;
        outside every enabled slot the inverter runs load first.

        The slots decide, not the priority register: that is how the SPH documents its "time
        periods", and it is the cautious reading for an emulator (a stale enabled slot shows up as
        battery activity instead of being hidden by a load-first priority register).
        """
        for wanted in ("battery_first", "grid_first"):
            if any(s.priority == wanted and s.covers(minute_of_day) for s in self.slots):
                return wanted  # type: ignore[return-value]
        return "load_first"


def decode_control(regmap: RegisterMap, values: Mapping[str, float]) -> ControlState:
    """The control state from holding-register values by name (engineering units).

    Registers absent from ``values`` take Growatt's factory settings: load first, no slots, rates
    100 %, battery-first stop SOC 100 %, grid-first stop SOC 10 %, no AC charging.
    """

    def v(name: str, default: float = 0.0) -> float:
        x = values.get(name, default)
        return default if x is None or not math.isfinite(x) else float(x)

    slots: list[Slot] = []
    if regmap.scheme == "sph":
        for prefix, prio in (("bat_first", "battery_first"), ("grid_first", "grid_first")):
            for k in range(1, regmap.slot_count(prio) + 1):  # type: ignore[arg-type]
                sh, sm = decode_hm(int(v(f"{prefix}_slot{k}_start")))
                eh, em = decode_hm(int(v(f"{prefix}_slot{k}_end")))
                slots.append(Slot(prio, sh * 60 + sm, eh * 60 + em, bool(int(v(f"{prefix}_slot{k}_enable")))))  # type: ignore[arg-type]
        code = int(v("priority"))
        priority: Priority | None = PRIORITY_NAMES.get(code, "load_first")
    else:
        for k in range(1, regmap.slot_count() + 1):
            enabled, code, sh, sm = decode_slot_start(int(v(f"slot{k}_start")))
            eh, em = decode_hm(int(v(f"slot{k}_end")))
            prio = PRIORITY_NAMES.get(code, "load_first")
            if prio != "load_first":  # a load-first slot is what the inverter does anyway
                slots.append(Slot(prio, sh * 60 + sm, eh * 60 + em, enabled))
        priority = None
    known = {"priority", *CONTROLS}
    return ControlState(
        priority=priority,
        slots=tuple(slots),
        bat_first_rate_pct=v("bat_first_rate", 100.0),
        bat_first_stop_soc=v("bat_first_stop_soc", 100.0) / 100.0,
        ac_charge=bool(int(v("ac_charge"))),
        grid_first_rate_pct=v("grid_first_rate", 100.0),
        grid_first_stop_soc=v("grid_first_stop_soc", 10.0) / 100.0,
        extra={k: float(x) for k, x in values.items()
               if k not in known and not re.fullmatch(r"(?:(bat|grid)_first_)?slot\d+_\w+", k)},
    )
