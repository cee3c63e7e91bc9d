"""House description: the TOML schema of DESIGN.md, validated once at load.

A house file names a site, its rooms (floor area, heater rating, neighbours, windows), optional PV
arrays, a battery, the hybrid inverter, the grid connection and the heating system. Physical
parameters a user does not give get documented priors (:mod:`pems.twin.priors`); calibration
writes fitted values into each room's ``[rooms.params]`` table.

Loading goes through :func:`load_house`, which accepts a built-in name (``reference``) or a path
and raises :class:`pems.errors.InputError` naming the file and key of every bad value.
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator

from pems.errors import InputError, Problem
from pems.tomlio import read_toml, validate

ROOM_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")

RoomType = Literal[
    "room", "living_room", "kitchen", "bedroom", "guest_room", "office", "bathroom", "toilet",
    "hallway", "entrance", "closet", "pantry", "technical",
]

NonNeg = Annotated[float, Field(ge=0)]
Pos = Annotated[float, Field(gt=0)]
Fraction = Annotated[float, Field(ge=0, le=1)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Site(_Strict):
    """Where the house stands; solar geometry and the local calendar come from here."""

    latitude: Annotated[float, Field(ge=-90, le=90)]
    longitude: Annotated[float, Field(ge=-180, le=180)]
    altitude_m: float = 0.0
    timezone: str = "UTC"
    country: str | None = None  # ISO 3166 code for public holidays of the load profile
    ground_temperature_c: float = 10.0  # undisturbed ground below the slab [°C]

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

    azimuth_deg: Annotated[float, Field(ge=0, le=360)]  # 0 north, 90 east, 180 south
    area_m2: Pos
    tilt_deg: Annotated[float, Field(ge=0, le=90)] = 90.0
    g_value: Fraction = 0.5  # total solar energy transmittance of the glazing [-]


class RoomParams(_Strict):
    """Physical parameters of one room; absent values get priors from area and room type.

    Units: capacities [J K⁻¹], conductances [W K⁻¹], aperture [m²], fractions [-].
    """

    C_air: Pos | None = None  # air, furniture and light surfaces
    C_mass: Pos | None = None  # floor slab (screed) and heavy inner structure
    H_am: Pos | None = None  # air ↔ mass (floor surface transfer)
    H_out: NonNeg | None = None  # air ↔ outdoors (envelope and ventilation)
    H_ground: NonNeg | None = None  # mass ↔ ground (slab on ground)
    A_sol: NonNeg | None = None  # effective solar aperture (area × g × frame × shading)
    f_sol_mass: Fraction | None = None  # share of solar gain absorbed by the mass node
    eta_heat: Annotated[float, Field(gt=0, le=1.5)] | None = None  # heat delivered / electricity
    f_heat_mass: Fraction | None = None  # share of heater output entering the mass node
    H_neighbour: dict[str, NonNeg] = Field(default_factory=dict)  # air ↔ air per neighbour id
    # Daily profile of internal gains beyond the known ones [W]: mean and two harmonics (local time).
    g0: float | None = None
    g1c: float | None = None
    g1s: float | None = None
    g2c: float | None = None
    g2s: float | None = None


class Room(_Strict):
    """One heated room: an air node and a floor/mass node in the thermal network."""

    id: str
    name: str | None = None
    floor_area_m2: Pos
    heater_w: NonNeg
    neighbours: list[str] = Field(default_factory=list)
    storey: int = 0
    ground_contact: bool | None = None  # default: on the lowest storey
    room_type: RoomType = "room"
    external_walls: bool = True
    windows: list[Window] = Field(default_factory=list)
    comfort_c: float | None = None  # the home's own thermostat: comfort (day) set-point [°C]
    eco_c: float | None = None  # eco (night) set-point [°C]
    params: RoomParams = Field(default_factory=RoomParams)

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
    kwp: Pos  # DC rating at STC [kWp]
    tilt_deg: Annotated[float, Field(ge=0, le=90)] = 35.0
    azimuth_deg: Annotated[float, Field(ge=0, le=360)] = 180.0
    losses_pct: Annotated[float, Field(ge=0, lt=100)] = 14.0  # PVWatts system losses [%]
    gamma_pdc: Annotated[float, Field(ge=-0.01, le=0)] = -0.0037  # power temperature coeff. [1/K]


class Inverter(_Strict):
    """The (hybrid) inverter shared by PV and battery."""

    ac_limit_w: Pos | None = None  # default: the PV DC rating
    efficiency_nom: Annotated[float, Field(gt=0.5, le=1)] = 0.96
    standby_w: NonNeg = 10.0  # own consumption drawn from the grid [W] (P_loss)


class Battery(_Strict):
    """A stationary battery behind the inverter; powers are on its AC side."""

    capacity_kwh: Pos
    max_charge_w: Pos
    max_discharge_w: Pos
    soc_min: Fraction = 0.1
    soc_max: Fraction = 0.95
    eta_charge: Annotated[float, Field(gt=0.5, le=1)] = 0.95
    eta_discharge: Annotated[float, Field(gt=0.5, le=1)] = 0.95
    self_discharge_w: NonNeg = 0.0  # drawn from the stored energy [W]


class Grid(_Strict):
    """The grid connection; ``None`` means no limit."""

    import_limit_w: Pos | None = None  # main fuse
    export_limit_w: NonNeg | None = None  # feed-in limit (the inverter curtails PV)


class Heating(_Strict):
    """The heating system serving every room's heater circuit."""

    kind: Literal["electric_underfloor", "electric_convector", "heat_pump"] = "electric_underfloor"
    thermostat_hysteresis_k: Annotated[float, Field(gt=0, le=2)] = 0.25  # home's own thermostats
    # Heat pump only: COP = eta_carnot · T_supply / (T_supply − T_out), clipped to [1, cop_max].
    eta_carnot: Annotated[float, Field(gt=0, le=1)] = 0.45
    supply_temp_c: float = 35.0
    cop_max: Annotated[float, Field(ge=1)] = 6.0


class Occupancy(_Strict):
    """Internal gains: occupants and the share of household electricity that ends as heat."""

    persons: NonNeg = 3.0
    sensible_w_per_person: NonNeg = 70.0
    electricity_to_heat: Fraction = 0.8


class House(_Strict):
    """A whole house: the input of :func:`pems.twin.model.build_model`."""

    name: str
    description: str | None = None
    site: Site
    rooms: list[Room] = Field(min_length=1)
    pv: list[PVArray] = Field(default_factory=list)
    inverter: Inverter | None = None
    battery: Battery | None = None
    grid: Grid = Field(default_factory=Grid)
    heating: Heating = Field(default_factory=Heating)
    occupancy: Occupancy = Field(default_factory=Occupancy)

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


def load_house(spec: str | Path, base_dir: Path | None = None) -> House:
    """Load a house by built-in name or TOML path (relative paths resolve against ``base_dir``).

    Raises
    ------
    InputError
        Unknown name, missing file, broken TOML or any bad value, with file and key.
    """
    path = resolve_house_path(spec, base_dir)
    house = validate(House, read_toml(path), path)
    check_house(house, path)
    return house


def resolve_house_path(spec: str | Path, base_dir: Path | None = None) -> Path:
    s = str(spec)
    if s in BUILTIN_HOUSES:
        return builtin_house_path(s)
    path = Path(s)
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    if path.suffix != ".toml" and not path.exists():
        raise InputError(s, "house", f"unknown house; expected a built-in name ({', '.join(BUILTIN_HOUSES)}) "
                                     "or a path to a .toml file")
    if not path.is_file():
        raise InputError(path, "", "house file not found")
    return path
