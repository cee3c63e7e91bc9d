"""Scenario files: what to simulate, validated once at load.

A scenario names a house, a period, weather, prices and household load, the comfort bands the
controllers must respect, how the run starts and what forecasts controllers receive. Built-in
scenarios live in ``scenarios/library/*.toml``; any TOML file with the same keys works, with paths
relative to the file.
"""

from __future__ import annotations

from datetime import datetime, time
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator

from pems.errors import InputError, Problem
from pems.tomlio import builtin_or_file, read_toml, validate
from pems.twin.house import House, load_house
from pems.twin.prices import Tariff
from pems.scenarios.unmodelled import Truth

if TYPE_CHECKING:
    from pems.twin.inputs import InputSpec


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RoomComfort(_Strict):
    """A room's comfort band [°C]; night values default to the day values."""

    low: float
    high: float
    night_low: float | None = None
    night_high: float | None = None


class Comfort(_Strict):
    """Comfort bands and their day/night schedule (local time of the house).

    Rooms with the home's own set-points (``comfort_c``/``eco_c`` in the house file) get a band
    from ``set-point − band_below_setpoint_k`` up to ``high``, unless ``use_house_setpoints`` is
    false or the room has its own entry under ``[comfort.rooms.<id>]``.
    """

    low: float = 20.0
    high: float = 24.0
    night_low: float | None = None
    night_high: float | None = None
    day_start: time = time(6, 0)
    night_start: time = time(22, 0)
    use_house_setpoints: bool = True
    band_below_setpoint_k: Annotated[float, Field(ge=0, le=5)] = 0.5
    rooms: dict[str, RoomComfort] = Field(default_factory=dict)


class Initial(_Strict):
    """Initial state: ``settled`` solves the steady state at the first day's mean weather with
    every room at its thermostat target; ``given`` uses ``T_room``/``T_mass`` (°C, one value or one
    per room)."""

    mode: Literal["settled", "given"] = "settled"
    T_room: float | dict[str, float] = 21.0
    T_mass: float | dict[str, float] | None = None  # default: equal to T_room
    soc: Annotated[float, Field(ge=0, le=1)] | None = None  # default: middle of the SOC band


class ForecastSpec(_Strict):
    """The forecasts controllers receive.

    ``perfect``: the truth. ``persistence``: weather, PV and load as at the same time the day
    before (prices and comfort bands are known ahead). ``noisy``: the truth plus AR(1) errors drawn
    per forecast issue, zero at lead 0 and growing with lead to the given standard deviations
    (temperature additive [K]; irradiance, PV and load multiplicative [-]); reproducible with ``seed``.
    ``learned``: PV and household load from the learned forecasters of
    :mod:`pems.controllers.forecast`, fitted on the ``learn_days`` before the start and issued at
    every step from what happened before it, on a perfect weather forecast (weather, window gains and
    prices are the truth, as in the backtests' upper bound).
    """

    model: Literal["perfect", "persistence", "noisy", "learned"] = "perfect"
    horizon_hours: Annotated[float, Field(gt=0, le=168)] = 48.0
    seed: int = 0
    sigma_T_out: Annotated[float, Field(ge=0)] = 1.5
    sigma_irradiance: Annotated[float, Field(ge=0)] = 0.35
    sigma_load: Annotated[float, Field(ge=0)] = 0.25
    correlation_hours: Annotated[float, Field(gt=0)] = 12.0
    learn_days: Annotated[float, Field(ge=14, le=730)] = 42.0


class MpcSpec(_Strict):
    """Settings of the ``mpc`` and ``oracle`` controllers (see :class:`pems.controllers.ocp.Weights`
    and :class:`pems.controllers.mpc.MpcConfig`)."""

    horizon_hours: Annotated[float, Field(gt=0, le=168)] = 24.0
    solver: Literal["auto", "lp", "ipopt"] = "auto"  # auto: the LP path where the OCP is linear
    fine_hours: Annotated[float, Field(ge=0, le=168)] = 6.0  # planned per control step, then ...
    coarse_minutes: Annotated[float, Field(gt=0, le=240)] = 60.0  # ... in stages of this length
    deadline_s: Annotated[float, Field(gt=0)] | None = None  # a step's solve chain; default half a step
    comfort: Annotated[float, Field(ge=0)] = 2.0  # currency per K·h per room
    comfort_quadratic: Annotated[float, Field(ge=0)] = 0.0  # currency per K²·h per room (> 0: an NLP)
    comfort_margin_k: Annotated[float, Field(ge=0, le=2)] = 0.1
    battery_wear: Annotated[float, Field(ge=0)] = 0.005  # currency per kWh throughput
    peak: Annotated[float, Field(ge=0)] = 0.0  # currency per kW·h above the threshold
    peak_threshold_kw: Annotated[float, Field(ge=0)] = 15.0
    terminal_battery_value: Annotated[float, Field(ge=0, le=1.5)] = 1.0
    terminal_heat_value: Annotated[float, Field(ge=0, le=1.5)] = 0.9


class Scenario(_Strict):
    """A scenario file (see DESIGN.md); every key but ``name``, ``house`` and ``start`` has a default."""

    name: str
    description: str | None = None
    house: str
    start: datetime
    days: Annotated[float, Field(gt=0, le=3660)] = 7.0
    step_minutes: Annotated[int, Field(ge=1, le=240)] = 15
    plant_step_seconds: Annotated[int, Field(ge=1, le=3600)] = 60
    weather: str = "sand-point-tmy3"
    prices: str = "cz-spot-2024"
    load: str = "h25"
    load_kwh_per_year: Annotated[float, Field(ge=0)] = 4000.0
    heating: bool = True
    controller: str = "rule-based"
    comfort: Comfort = Field(default_factory=Comfort)
    tariff: Tariff = Field(default_factory=Tariff)
    initial: Initial = Field(default_factory=Initial)
    forecast: ForecastSpec = Field(default_factory=ForecastSpec)
    mpc: MpcSpec = Field(default_factory=MpcSpec)
    truth: Truth | None = None  # heat the controllers' model does not know (see scenarios/unmodelled.py)

    @field_validator("start")
    @classmethod
    def _aware(cls, v: datetime) -> datetime:
        if v.tzinfo is None:
            raise ValueError("give a time zone, e.g. 2024-01-22T00:00:00Z")
        return v


class LoadedScenario:
    """A validated scenario with its house and where its relative paths resolve."""

    def __init__(self, spec: Scenario, house: House, path: Path) -> None:
        self.spec = spec
        self.house = house
        self.path = path

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def base_dir(self) -> Path:
        return self.path.parent

    @property
    def step(self) -> pd.Timedelta:
        return pd.Timedelta(minutes=self.spec.step_minutes)

    @property
    def start(self) -> pd.Timestamp:
        return pd.Timestamp(self.spec.start).tz_convert("UTC")

    @property
    def n_steps(self) -> int:
        return int(round(self.spec.days * 24 * 60 / self.spec.step_minutes))

    @property
    def horizon_steps(self) -> int:
        return int(round(self.spec.forecast.horizon_hours * 60 / self.spec.step_minutes))

    def input_spec(self) -> InputSpec:
        from pems.twin.inputs import InputSpec  # pvlib and friends: only when inputs are built

        s = self.spec
        return InputSpec(weather=s.weather, prices=s.prices, load=s.load,
                         load_kwh_per_year=s.load_kwh_per_year, tariff=s.tariff, base_dir=self.base_dir)


def library_dir() -> Path:
    return Path(str(resources.files("pems.scenarios") / "library"))


def builtin_scenarios() -> tuple[str, ...]:
    return tuple(sorted(p.stem for p in library_dir().glob("*.toml")))


def load_scenario(spec: str | Path) -> LoadedScenario:
    """A built-in scenario by name, or a scenario TOML file."""
    path = builtin_or_file(spec, library_dir(), builtin_scenarios(), "scenario", "scenario")
    if not path.is_file():
        raise InputError(path, "", "scenario file not found")
    sc = validate(Scenario, read_toml(path), path)
    house = load_house(sc.house, base_dir=path.parent)
    _check_against_house(sc, house, path)
    if sc.step_minutes * 60 % sc.plant_step_seconds:
        raise InputError(path, "plant_step_seconds",
                         f"{sc.plant_step_seconds} s does not divide the control step of {sc.step_minutes} min")
    return LoadedScenario(sc, house, path)


def _check_against_house(sc: Scenario, house: House, path: Path) -> None:
    rooms = set(house.room_ids)
    problems = []
    for rid in sc.comfort.rooms:
        if rid not in rooms:
            problems.append(Problem(str(path), f"comfort.rooms.{rid}",
                                    f"unknown room; the house {house.name!r} has {', '.join(house.room_ids)}"))
    for key in ("T_room", "T_mass"):
        v = getattr(sc.initial, key)
        if isinstance(v, dict):
            for rid in v:
                if rid not in rooms:
                    problems.append(Problem(str(path), f"initial.{key}.{rid}", "unknown room"))
    for rid, band in sc.comfort.rooms.items():
        if band.low >= band.high:
            problems.append(Problem(str(path), f"comfort.rooms.{rid}.low", f"must be below high ({band.high})"))
    if sc.truth is not None:
        for i, g in enumerate(sc.truth.gains):
            if g.room not in rooms:
                problems.append(Problem(str(path), f"truth.gains[{i}].room",
                                        f"unknown room {g.room!r}; the house {house.name!r} has {', '.join(house.room_ids)}"))
    if sc.comfort.low >= sc.comfort.high:
        problems.append(Problem(str(path), "comfort.low", f"must be below comfort.high ({sc.comfort.high})"))
    if problems:
        raise InputError.many(problems)
