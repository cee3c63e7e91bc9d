"""Mapping files: which InfluxDB measurement, field and tags give each canonical history column.

A mapping is TOML (built-in presets live in ``calibration/mappings/``)::

    name = "loxone-growatt"
    currency = "CZK"                 # of the price columns
    rooms = { obyvak = "obyvak" }    # canonical room id -> the name the source uses

    [[series]]
    column = "T_room__{room}"        # canonical column; {room} repeats the entry for every room
    bucket = "loxone"                # InfluxDB 2.x bucket, or the database of the 1.x API
    measurement = "temperature"
    field = "temperature_{room}"     # {room} is the source's room name
    tags = {}                        # tag filters, e.g. { type = "heating" }
    aggregate = "mean"               # mean | last | max | min | sum  (per model step)
    scale = 1.0                      # value = raw × scale + offset  (e.g. 0.01 for SOC in %)
    offset = 0.0
    counter = false                  # cumulative counter in kWh: turned into power [W]

    [derived]                        # columns computed from extracted ones (pandas expressions)
    P_pv = "_pv1 + _pv2"

Columns starting with ``_`` are helpers, dropped after ``[derived]`` is evaluated. ``relay__<room>``
columns become heating power with the house's ratings when the history is prepared, and
``P_load_total`` (a meter of the whole house) becomes ``P_load`` once the heating is subtracted.
"""

from __future__ import annotations

import hashlib
import re
from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from pems.errors import InputError
from pems.tomlio import builtin_or_file, read_toml, validate

AGGREGATES = ("mean", "last", "max", "min", "sum")
NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class Series(BaseModel):
    """One source series and the canonical column it becomes."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    column: str
    """The canonical column it becomes (``T_out``, ``T_room__{room}``, …), or a ``_helper`` for ``[derived]``."""
    bucket: str
    """InfluxDB 2.x bucket, or the database of the 1.x API."""
    measurement: str
    """The measurement; ``{room}`` stands for the source's room name."""
    field: str
    """The field; ``{room}`` stands for the source's room name."""
    tags: dict[str, str] = Field(default_factory=dict)
    """Tag filters, e.g. ``{ type = "heating" }``."""
    aggregate: Literal["mean", "last", "max", "min", "sum"] = "mean"
    """How the server aggregates each model step."""
    scale: float = 1.0
    """``value = raw × scale + offset``, e.g. 0.01 for a SOC in %."""
    offset: float = 0.0
    """Added after scaling, in the column's unit."""
    counter: bool = False
    """The field is a cumulative energy counter [kWh], turned into power [W]."""

    @field_validator("column")
    @classmethod
    def _column(cls, v: str) -> str:
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_{}]*(__[A-Za-z0-9_{}-]+)?$", v):
            raise ValueError("a column name such as T_out, T_room__{room} or _helper")
        return v


class Mapping(BaseModel):
    """A whole mapping file."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    name: str
    """The mapping's name."""
    description: str | None = None
    """One line about the mapping."""
    currency: str = "EUR"
    """Currency of the price columns."""
    rooms: dict[str, str] = Field(default_factory=dict)
    """Canonical room id → the name the source uses for it (in ``{room}`` templates)."""
    series: list[Series] = Field(min_length=1)
    """The source series, one ``[[series]]`` table each."""
    derived: dict[str, str] = Field(default_factory=dict)
    """Columns computed from extracted ones: column name → arithmetic on column names, e.g. ``P_pv = "_pv1 + _pv2"``."""
    forecast: list[Series] = Field(default_factory=list)
    """Forecasts the home stores (``[[forecast]]`` tables, at their target times): ``T_out``, ``ghi``, ``dni``,
    ``dhi`` of a weather forecast and ``spot``, the day-ahead price [currency kWh⁻¹]; read by the live loop
    (``[forecast] weather = "influx"``, ``prices = "influx"``), not by ``pems history``."""

    def expanded(self, rooms: list[str] | None = None) -> list[Series]:
        """Every series with ``{room}`` templates expanded (optionally for some rooms only)."""
        out = []
        names = self.rooms if rooms is None else {r: self.rooms.get(r, r) for r in rooms}
        for s in self.series:
            if "{room}" in s.column:
                for canonical, source in names.items():
                    out.append(s.model_copy(update={
                        "column": s.column.replace("{room}", canonical),
                        "field": s.field.replace("{room}", source),
                        "measurement": s.measurement.replace("{room}", source),
                        "tags": {k: v.replace("{room}", source) for k, v in s.tags.items()}}))
            else:
                out.append(s)
        return out

    def digest(self) -> str:
        """A stable hash of the mapping's content (for the cache key)."""
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:16]


def builtin_mappings() -> tuple[str, ...]:
    folder = Path(str(resources.files("pems.calibration") / "mappings"))
    return tuple(sorted(p.stem for p in folder.glob("*.toml")))


def load_mapping(spec: str | Path) -> Mapping:
    """A built-in preset by name (``loxone-growatt``) or a mapping TOML file."""
    folder = Path(str(resources.files("pems.calibration") / "mappings"))
    path = builtin_or_file(spec, folder, builtin_mappings(), "--mapping", "mapping", "preset")
    m = validate(Mapping, read_toml(path), path)
    for key, expr in m.derived.items():
        if not NAME.match(key):
            raise InputError(path, f"derived.{key}", "expected a column name")
        if any(tok in expr for tok in ("__import__", "lambda", ";", "@")):
            raise InputError(path, f"derived.{key}", "only arithmetic on column names is allowed")
    return m
