"""House description: the house file's TOML schema, validated once at load.

A house file names a site, its rooms (floor area, heater rating, neighbours, windows), optional PV
arrays, a battery, the hybrid inverter, the grid connection and the heating system. Physical
parameters a user does not give get documented priors (:mod:`pems.twin.priors`); calibration
writes fitted values into each room's ``[rooms.params]`` table.

Loading goes through :func:`load_house`, which accepts a built-in name (``reference``) or a path
and raises :class:`pems.errors.InputError` naming the file and key of every bad value. Every key,
with its unit, default and allowed range, is listed in ``docs/reference/house.md``, rendered from
the attribute docstrings below (``python -m pems.docs``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator

from pems.errors import InputError, Problem
from pems.tomlio import read_toml, validate
from pems.twin.ev import Ev

ROOM_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")

RoomType = Literal[
    "room", "living_room", "kitchen", "bedroom", "guest_room", "office", "bathroom", "toilet",
    "hallway", "entrance", "closet", "pantry", "technical",
]

NonNeg = Annotated[float, Field(ge=0)]
Pos = Annotated[float, Field(gt=0)]
Fraction = Annotated[float, Field(ge=0, le=1)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class Site(_Strict):
    """Where the house stands; solar geometry and the local calendar come from here."""

    latitude: Annotated[float, Field(ge=-90, le=90)]
    """Latitude, north positive [°]."""
    longitude: Annotated[float, Field(ge=-180, le=180)]
    """Longitude, east positive [°]."""
    altitude_m: float = 0.0
    """Height above sea level [m]."""
    timezone: str = "UTC"
    """IANA time zone, e.g. ``Europe/Prague``: the local calendar of schedules, comfort bands and holidays."""
    country: str | None = None
    """ISO 3166 country code whose public holidays shape the household load profile (not set: no holidays)."""
    ground_temperature_c: float = 10.0
    """Undisturbed ground temperature below the slab [°C]."""

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown IANA time zone {v!r}, e.g. 'Europe/Prague'") from None
        return v


class Window(_Strict):
    """A glazed opening; its orientation sets which facade irradiance drives the room's gains."""

    azimuth_deg: Annotated[float, Field(ge=0, le=360)]
    """Direction the window faces: 0 north, 90 east, 180 south, 270 west [°]."""
    area_m2: Pos
    """Glazed area [m²]."""
    tilt_deg: Annotated[float, Field(ge=0, le=90)] = 90.0
    """Tilt from horizontal: 90 is a wall, 0 a flat skylight [°]."""
    g_value: Fraction = 0.5
    """Total solar energy transmittance of the glazing [-]."""


class RoomParams(_Strict):
    """Physical parameters of one room; absent values get priors from area and room type.

    Units: capacities [J K⁻¹], conductances [W K⁻¹], aperture [m²], fractions [-].
    """

    C_air: Pos | None = None
    """Heat capacity of the air, furniture and light surfaces [J K⁻¹]."""
    C_mass: Pos | None = None
    """Heat capacity of the floor slab (screed) and heavy inner structure [J K⁻¹]."""
    H_am: Pos | None = None
    """Conductance air ↔ mass: the floor surface transfer [W K⁻¹]."""
    H_out: NonNeg | None = None
    """Conductance air ↔ outdoors: envelope and ventilation [W K⁻¹]."""
    H_ground: NonNeg | None = None
    """Conductance mass ↔ ground, for a slab on ground [W K⁻¹]."""
    A_sol: NonNeg | None = None
    """Effective solar aperture: window area × g × frame × shading [m²]."""
    f_sol_mass: Fraction | None = None
    """Share of the solar gain absorbed by the mass node [-]."""
    eta_heat: Annotated[float, Field(gt=0, le=1.5)] | None = None
    """Heat delivered per unit of electricity (before a heat pump's COP) [-]."""
    f_heat_mass: Fraction | None = None
    """Share of the heater output entering the mass node (underfloor: 1) [-]."""
    H_neighbour: dict[str, NonNeg] = Field(default_factory=dict)
    """Conductance air ↔ air to each neighbour, by room id [W K⁻¹]; a coupling given from both sides must agree."""
    g0: float | None = None
    """Daily profile of internal gains beyond the known ones (fitted by calibration): its mean [W]."""
    g1c: float | None = None
    """The same profile's daily harmonic, cosine term, local time [W]."""
    g1s: float | None = None
    """Its daily harmonic, sine term [W]."""
    g2c: float | None = None
    """Its half-day harmonic, cosine term [W]."""
    g2s: float | None = None
    """Its half-day harmonic, sine term [W]."""


class Room(_Strict):
    """One heated room: an air node and a floor/mass node in the thermal network."""

    id: str
    """The room's id: letters, digits, ``_`` and ``-`` (no ``__``); the ``<room>`` of column names."""
    name: str | None = None
    """A readable name for reports."""
    floor_area_m2: Pos
    """Heated floor area; the priors of the room's parameters scale with it [m²]."""
    heater_w: NonNeg
    """Nominal electric power of the room's heater circuit [W]."""
    neighbours: list[str] = Field(default_factory=list)
    """Ids of the rooms it exchanges heat with (listing a pair once is enough)."""
    storey: int = 0
    """Storey, 0 the ground floor; the top storey loses heat through the roof."""
    ground_contact: bool | None = None
    """Whether the slab lies on the ground (default: rooms on the lowest storey)."""
    room_type: RoomType = "room"
    """What the room is used for: sets its share of the internal gains."""
    external_walls: bool = True
    """Whether the room has walls to the outside (false: an interior room)."""
    windows: list[Window] = Field(default_factory=list)
    """Its windows, e.g. ``[{ azimuth_deg = 180, area_m2 = 5.0 }]``."""
    comfort_c: float | None = None
    """The home's own thermostat: comfort (day) set-point [°C]."""
    eco_c: float | None = None
    """The home's own thermostat: eco (night) set-point [°C]."""
    params: RoomParams = Field(default_factory=RoomParams)
    """Physical parameters; absent values get priors from area and room type."""

    @field_validator("id")
    @classmethod
    def _id_form(cls, v: str) -> str:
        if not ROOM_ID.match(v) or "__" in v:
            raise ValueError(
                "room ids are letters, digits, '_' and '-' (no '__', which separates column names)"
            )
        return v


class PVArray(_Strict):
    """A PV string/array on one plane, modelled with pvlib's PVWatts chain."""

    name: str | None = None
    """A readable name for reports."""
    kwp: Pos
    """DC rating at standard test conditions [kWp]."""
    tilt_deg: Annotated[float, Field(ge=0, le=90)] = 35.0
    """Tilt of the modules from horizontal [°]."""
    azimuth_deg: Annotated[float, Field(ge=0, le=360)] = 180.0
    """Direction the modules face: 0 north, 90 east, 180 south [°]."""
    losses_pct: Annotated[float, Field(ge=0, lt=100)] = 14.0
    """PVWatts system losses: soiling, wiring, mismatch, … [%]."""
    gamma_pdc: Annotated[float, Field(ge=-0.01, le=0)] = -0.0037
    """Temperature coefficient of the DC power [K⁻¹]."""


class Inverter(_Strict):
    """The (hybrid) inverter shared by PV and battery."""

    ac_limit_w: Pos | None = None
    """AC power rating shared by PV and battery (default: the PV DC rating) [W]."""
    efficiency_nom: Annotated[float, Field(gt=0.5, le=1)] = 0.96
    """Nominal DC → AC efficiency of the PV path [-]."""
    standby_w: NonNeg = 10.0
    """Own consumption drawn from the grid, part of ``P_loss`` [W]."""


def inverter_ac_limit(arrays: Sequence[PVArray], inverter: Inverter | None) -> float:
    """AC rating of the inverter [W]; without one given, the arrays' DC rating."""
    if inverter is not None and inverter.ac_limit_w is not None:
        return inverter.ac_limit_w
    return sum(a.kwp for a in arrays) * 1000.0


class Battery(_Strict):
    """A stationary battery behind the inverter; powers are on its AC side."""

    capacity_kwh: Pos
    """Energy content from empty to full [kWh]."""
    max_charge_w: Pos
    """Largest charging power, AC side [W]."""
    max_discharge_w: Pos
    """Largest discharging power, AC side [W]."""
    soc_min: Fraction = 0.1
    """Lowest state of charge a controller may use; below ``soc_max`` [-]."""
    soc_max: Fraction = 0.95
    """Highest state of charge a controller may use [-]."""
    eta_charge: Annotated[float, Field(gt=0.5, le=1)] = 0.95
    """Charging efficiency, AC → stored [-]."""
    eta_discharge: Annotated[float, Field(gt=0.5, le=1)] = 0.95
    """Discharging efficiency, stored → AC [-]."""
    self_discharge_w: NonNeg = 0.0
    """Standing loss drawn from the stored energy [W]."""


class Grid(_Strict):
    """The grid connection; ``None`` means no limit."""

    import_limit_w: Pos | None = None
    """Main fuse: the largest import; the plant sheds heating above it [W]."""
    export_limit_w: NonNeg | None = None
    """Feed-in limit; the inverter curtails PV above it [W]."""


class Heating(_Strict):
    """The heating system serving every room's heater circuit."""

    kind: Literal["electric_underfloor", "electric_convector", "heat_pump"] = "electric_underfloor"
    """Where the heat goes: underfloor (into the slab), convectors (into the air) or a heat pump's floor circuits."""
    thermostat_hysteresis_k: Annotated[float, Field(gt=0, le=2)] = 0.25
    """Half-width of the switching band of the home's own thermostats [K]."""
    eta_carnot: Annotated[float, Field(gt=0, le=1)] = 0.45
    """Heat pump only: share of the Carnot COP, ``COP = eta_carnot · T_supply / (T_supply − T_out)`` [-]."""
    supply_temp_c: float = 35.0
    """Heat pump only: supply temperature of the heating circuits [°C]."""
    cop_max: Annotated[float, Field(ge=1)] = 6.0
    """Heat pump only: the COP is clipped to ``[1, cop_max]`` [-]."""


class Occupancy(_Strict):
    """Internal gains: occupants and the share of household electricity that ends as heat."""

    persons: NonNeg = 3.0
    """Occupants: all at home from 17:00 to 08:00 and at weekends, 30 % on workdays between."""
    sensible_w_per_person: NonNeg = 70.0
    """Sensible heat of one person present [W]."""
    electricity_to_heat: Fraction = 0.8
    """Share of the household electricity (not heating) that ends as heat in the rooms [-]."""


class House(_Strict):
    """A whole house: the input of :func:`pems.twin.model.build_model`."""

    name: str
    """The house's name, shown in reports."""
    description: str | None = None
    """One line about the house."""
    site: Site
    """Where it stands."""
    rooms: list[Room] = Field(min_length=1)
    """Its heated rooms, one ``[[rooms]]`` table each."""
    pv: list[PVArray] = Field(default_factory=list)
    """PV arrays, one ``[[pv]]`` table each."""
    inverter: Inverter | None = None
    """The hybrid inverter (default: every key at its default)."""
    battery: Battery | None = None
    """The battery (not set: no battery)."""
    grid: Grid = Field(default_factory=Grid)
    """The grid connection's limits."""
    heating: Heating = Field(default_factory=Heating)
    """The heating system."""
    occupancy: Occupancy = Field(default_factory=Occupancy)
    """Occupants and appliances as internal gains."""
    ev: list[Ev] = Field(default_factory=list)
    """Electric cars charged at home, one ``[[ev]]`` table each (see :mod:`pems.twin.ev`)."""

    @property
    def room_ids(self) -> tuple[str, ...]:
        return tuple(r.id for r in self.rooms)

    @property
    def has_inverter(self) -> bool:
        return bool(self.pv) or self.battery is not None

    def room(self, room_id: str) -> Room:
        for r in self.rooms:
            if r.id == room_id:
                return r
        raise KeyError(room_id)

    def couplings(self) -> list[tuple[str, str]]:
        """Unordered neighbour pairs (each once, sorted), in a stable order."""
        pairs: set[tuple[str, str]] = set()
        for r in self.rooms:
            for n in r.neighbours:
                pairs.add(tuple(sorted((r.id, n))))  # type: ignore[arg-type]
        order = {rid: i for i, rid in enumerate(self.room_ids)}
        return sorted(pairs, key=lambda ab: (order[ab[0]], order[ab[1]]))

    def lowest_storey(self) -> int:
        return min(r.storey for r in self.rooms)


def check_house(house: House, source: str | Path) -> None:
    """Cross-field checks pydantic cannot express per value; raises one error listing all."""
    src = str(source)
    problems: list[Problem] = []
    ids = [r.id for r in house.rooms]
    seen: set[str] = set()
    for i, rid in enumerate(ids):
        if rid in seen:
            problems.append(Problem(src, f"rooms[{i}].id", f"duplicate room id {rid!r}"))
        seen.add(rid)
    known = set(ids)
    for i, r in enumerate(house.rooms):
        for j, n in enumerate(r.neighbours):
            if n == r.id:
                problems.append(Problem(src, f"rooms[{i}].neighbours[{j}]", "a room cannot neighbour itself"))
            elif n not in known:
                problems.append(Problem(
                    src, f"rooms[{i}].neighbours[{j}]",
                    f"unknown room {n!r}; expected one of: {', '.join(ids)}"))
        for n in r.params.H_neighbour:
            if n not in r.neighbours and not (n in known and r.id in house.room(n).neighbours):
                problems.append(Problem(
                    src, f"rooms[{i}].params.H_neighbour.{n}",
                    f"{n!r} is not a neighbour of {r.id!r}; list it in neighbours first"))
        if r.comfort_c is not None and r.eco_c is not None and r.eco_c > r.comfort_c:
            problems.append(Problem(src, f"rooms[{i}].eco_c",
                                    f"eco set-point {r.eco_c} is above the comfort set-point {r.comfort_c}"))
    if problems:  # the checks below need known neighbours
        raise InputError.many(problems)
    # A coupling given from both sides must agree.
    for a, b in house.couplings():
        ha = house.room(a).params.H_neighbour.get(b)
        hb = house.room(b).params.H_neighbour.get(a)
        if ha is not None and hb is not None and abs(ha - hb) > 1e-9 * max(ha, hb, 1.0):
            problems.append(Problem(src, f"rooms[{ids.index(b)}].params.H_neighbour.{a}",
                                    f"{hb} disagrees with {ha} given by room {a!r}"))
    if house.battery is not None and house.battery.soc_min >= house.battery.soc_max:
        problems.append(Problem(src, "battery.soc_min",
                                f"must be below battery.soc_max ({house.battery.soc_max})"))
    if problems:
        raise InputError.many(problems)


BUILTIN_HOUSES = ("reference", "heat-pump")


def builtin_house_path(name: str) -> Path:
    return Path(str(resources.files("pems.twin") / "houses" / f"{name}.toml"))


def load_house(spec: str | Path, base_dir: Path | None = None, source: str | Path | None = None,
               key: str = "house") -> House:
    """Load a house by built-in name or TOML path (relative paths resolve against ``base_dir``).

    ``source`` and ``key`` say where ``spec`` was given (the scenario or configuration file and its
    key, or ``command line`` and the flag): an unknown name or a missing file is reported there.

    Raises
    ------
    InputError
        Unknown name, missing file, broken TOML or any bad value, with file and key.
    """
    path = resolve_house_path(spec, base_dir, source, key)
    house = validate(House, read_toml(path), path)
    check_house(house, path)
    return with_calendars_from(house, path.parent, path, "ev")


def with_calendars_from(house: House, folder: Path, source: Path, key: str) -> House:
    """The cars' calendar files resolved against ``folder`` (the file that named them), checked to exist."""
    cars = []
    for i, e in enumerate(house.ev):
        if e.calendar is not None:
            cal = Path(e.calendar) if Path(e.calendar).is_absolute() else folder / e.calendar
            if not cal.is_file():
                raise InputError(source, f"{key}[{i}].calendar", f"{cal}: calendar file not found")
            e = e.model_copy(update={"calendar": str(cal)})
        cars.append(e)
    return house.model_copy(update={"ev": cars}) if house.ev else house


def resolve_house_path(spec: str | Path, base_dir: Path | None = None, source: str | Path | None = None,
                       key: str = "house") -> Path:
    """The TOML file of a built-in house or of a house file (see :func:`load_house`)."""
    s = str(spec)
    if s in BUILTIN_HOUSES:
        return builtin_house_path(s)
    path = Path(s)
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    if path.suffix != ".toml" and not path.exists():
        raise InputError(source if source is not None else s, key,
                         f"unknown house {s!r}; expected one of {', '.join(BUILTIN_HOUSES)} or a path to a .toml file")
    if not path.is_file():
        if source is not None:
            raise InputError(source, key, f"{path}: house file not found")
        raise InputError(path, "", "house file not found")
    return path
