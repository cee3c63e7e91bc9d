"""Scenario files: what to simulate, validated once at load.

A scenario names a house, a period, weather, prices and household load, the comfort bands the
controllers must respect, how the run starts and what forecasts controllers receive. Built-in
scenarios live in ``scenarios/library/*.toml``; any TOML file with the same keys works, with paths
relative to the file. Every key, with its unit, default and allowed range, is listed in
``docs/reference/scenario.md``, rendered from the attribute docstrings below (``python -m pems.docs``).
"""

from __future__ import annotations

from datetime import datetime, time
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import pandas as pd
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from pems.errors import InputError, Problem
from pems.tomlio import builtin_or_file, read_toml, validate
from pems.twin.ev import Ev
from pems.twin.house import House, load_house
from pems.twin.prices import Tariff
from pems.scenarios.unmodelled import Truth

if TYPE_CHECKING:
    from pems.twin.inputs import InputSpec


def _divides_day(v: int) -> int:
    if 1440 % v:
        raise ValueError(f"{v} min does not divide the day; expected e.g. 5, 10, 15, 30 or 60")
    return v


#: A control step [min]: steps must tile the day, or a run would end past its last day.
StepMinutes = Annotated[int, Field(ge=1, le=240), AfterValidator(_divides_day)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class RoomComfort(_Strict):
    """A room's comfort band [°C]; night values default to the day values."""

    low: float
    """Lower bound by day [°C]."""
    high: float
    """Upper bound by day [°C]."""
    night_low: float | None = None
    """Lower bound by night (default: ``low``) [°C]."""
    night_high: float | None = None
    """Upper bound by night (default: ``high``) [°C]."""

    @model_validator(mode="after")
    def _ordered(self) -> RoomComfort:
        _check_band(self.low, self.high, self.night_low, self.night_high)
        return self


def _check_band(low: float, high: float, night_low: float | None, night_high: float | None) -> None:
    """A band's bounds in order, by day and by night (the night's default to the day's)."""
    if not low < high:
        raise ValueError(f"low = {low:g} °C must be below high = {high:g} °C")
    nl = low if night_low is None else night_low
    nh = high if night_high is None else night_high
    if not nl < nh:
        raise ValueError(f"by night the band would be {nl:g}–{nh:g} °C (night_low"
                         f"{'' if night_low is not None else ', from low'} must be below night_high"
                         f"{'' if night_high is not None else ', from high'})")


class Comfort(_Strict):
    """Comfort bands and their day/night schedule (local time of the house).

    Rooms with the home's own set-points (``comfort_c``/``eco_c`` in the house file) get a band
    from ``set-point − band_below_setpoint_k`` up to ``high``, unless ``use_house_setpoints`` is
    false or the room has its own entry under ``[comfort.rooms.<id>]``.
    """

    low: float = 20.0
    """Lower bound of every room's band by day; below ``high`` [°C]."""
    high: float = 24.0
    """Upper bound by day [°C]."""
    night_low: float | None = None
    """Lower bound by night (default: ``low``) [°C]."""
    night_high: float | None = None
    """Upper bound by night (default: ``high``) [°C]."""
    day_start: time = time(6, 0)
    """Local time the day band starts, ``"HH:MM"``."""
    night_start: time = time(22, 0)
    """Local time the night band starts, ``"HH:MM"``."""
    use_house_setpoints: bool = True
    """Rooms with ``comfort_c``/``eco_c`` in the house file take their band from those set-points."""
    band_below_setpoint_k: Annotated[float, Field(ge=0, le=5)] = 0.5
    """How far below a house set-point the lower bound lies [K]."""
    rooms: dict[str, RoomComfort] = Field(default_factory=dict)
    """A band of its own for some rooms, by room id."""

    @model_validator(mode="after")
    def _ordered(self) -> Comfort:
        _check_band(self.low, self.high, self.night_low, self.night_high)
        if self.day_start == self.night_start:
            raise ValueError(f"day_start and night_start are both {self.day_start:%H:%M}: there would be no night "
                             "(or no day)")
        return self


class Initial(_Strict):
    """Initial state: ``settled`` solves the steady state at the first day's mean weather with
    every room at its thermostat target; ``given`` uses ``T_room``/``T_mass`` (°C, one value or one
    per room)."""

    mode: Literal["settled", "given"] = "settled"
    """``settled``: the steady state of the first day; ``given``: the temperatures below."""
    T_room: float | dict[str, float] = 21.0
    """Air temperature of every room, or by room id (``given`` only) [°C]."""
    T_mass: float | dict[str, float] | None = None
    """Slab temperature of every room, or by room id (default: ``T_room``) [°C]."""
    soc: Annotated[float, Field(ge=0, le=1)] | None = None
    """Battery state of charge at the start (default: the middle of the SOC band) [-]."""


class ForecastSpec(_Strict):
    """The forecasts controllers receive.

    ``perfect``: the truth. ``persistence``: weather, PV and load as at the same time the day
    before (prices and comfort bands are known ahead). ``noisy``: the truth plus AR(1) errors drawn
    per forecast issue, zero at lead 0 and growing with lead to the given standard deviations
    (temperature additive [K]; irradiance, PV and load multiplicative [-]); reproducible with ``seed``.
    ``learned``: PV and household load from the learned forecasters of
    :mod:`pems.controllers.forecast`, fitted on the ``learn_days`` before the start and issued at
    every step from what happened before it, on a perfect weather forecast (weather, window gains and
    prices are the truth, as in the backtests' upper bound). ``archived``: ``pems replay`` only, the
    weather forecasts a home archived (weather, window gains and PV from them, the household load as
    the day before).
    """

    model: Literal["perfect", "persistence", "noisy", "learned", "archived"] = "perfect"
    """What controllers are told about the future (see above)."""
    horizon_hours: Annotated[float, Field(gt=0, le=168)] = 48.0
    """Length of each forecast; at least the MPC's horizon [h]."""
    seed: int = 0
    """``noisy``: seed of the forecast errors."""
    sigma_T_out: Annotated[float, Field(ge=0)] = 1.5
    """``noisy``: standard deviation of the outdoor-temperature error at long lead times [K]."""
    sigma_irradiance: Annotated[float, Field(ge=0)] = 0.35
    """``noisy``: relative standard deviation of the irradiance and PV error [-]."""
    sigma_load: Annotated[float, Field(ge=0)] = 0.25
    """``noisy``: relative standard deviation of the household-load error [-]."""
    correlation_hours: Annotated[float, Field(gt=0)] = 12.0
    """``noisy``: correlation time of the AR(1) errors [h]."""
    learn_days: Annotated[float, Field(ge=14, le=730)] = 42.0
    """``learned``: days before the start the forecasters are fitted on [d]."""


class MpcSpec(_Strict):
    """Settings of the ``mpc`` and ``oracle`` controllers (see :class:`pems.controllers.ocp.Weights`
    and :class:`pems.controllers.mpc.MpcConfig`)."""

    horizon_hours: Annotated[float, Field(gt=0, le=168)] = 24.0
    """Planning horizon [h]."""
    solver: Literal["auto", "lp", "ipopt"] = "auto"
    """``auto``: the LP path (HiGHS) where the problem is linear, else do-mpc with IPOPT; ``lp`` or ``ipopt`` force one."""
    fine_hours: Annotated[float, Field(ge=0, le=168)] = 6.0
    """The first hours of the horizon are planned per control step … [h]"""
    coarse_minutes: Annotated[float, Field(gt=0, le=240)] = 60.0
    """… the rest in stages of this length [min]."""
    deadline_s: Annotated[float, Field(gt=0)] | None = None
    """Time limit of a step's whole solve chain (default: half a control step) [s]."""
    comfort: Annotated[float, Field(ge=0)] = 2.0
    """Penalty on leaving a room's band, per room [currency K⁻¹ h⁻¹]."""
    comfort_quadratic: Annotated[float, Field(ge=0)] = 0.0
    """Quadratic penalty on leaving the band, per room; above 0 the problem is an NLP [currency K⁻² h⁻¹]."""
    comfort_margin_k: Annotated[float, Field(ge=0, le=2)] = 0.1
    """Back-off inside the band the plan aims for [K]."""
    battery_wear: Annotated[float, Field(ge=0)] = 0.005
    """Cost of battery throughput [currency kWh⁻¹]."""
    ev_shortfall: Annotated[float, Field(ge=0)] = 1.0
    """Price of each kWh a car leaves without, below its target: the soft departure target [currency kWh⁻¹]."""
    peak: Annotated[float, Field(ge=0)] = 0.0
    """Penalty on import above ``peak_threshold_kw`` [currency kW⁻¹ h⁻¹]."""
    peak_threshold_kw: Annotated[float, Field(ge=0)] = 15.0
    """Import above which ``peak`` applies [kW]."""
    terminal_battery_value: Annotated[float, Field(ge=0, le=1.5)] = 1.0
    """Value of energy left in the battery at the horizon's end, as a share of the horizon's mean import price [-]."""
    terminal_heat_value: Annotated[float, Field(ge=0, le=1.5)] = 0.9
    """Value of heat left in the building at the horizon's end, as a share of the horizon's mean import price [-], for the heat the house will need: none in a room whose free-running steady state in the horizon's mean weather is at or above its band's lower bound, all of it 2 K or more below."""


class Scenario(_Strict):
    """A scenario file; every key but ``name``, ``house`` and ``start`` has a default."""

    name: str
    """The scenario's name, shown in reports and output folders."""
    description: str | None = None
    """One line about the scenario."""
    house: str
    """A built-in house name or a house file, relative to this file."""
    ev: list[Ev] = Field(default_factory=list)
    """Cars added to the house for this scenario, one ``[[ev]]`` table each, as in a house file."""
    start: datetime
    """First instant, with a time zone, e.g. ``2024-01-22T00:00:00+01:00``."""
    days: Annotated[float, Field(gt=0, le=3660)] = 7.0
    """Length of the run [d]."""
    step_minutes: StepMinutes = 15
    """Control step: controllers act, and the trajectory has a row, once a step; divides the day (e.g. 5, 10, 15, 30, 60) [min]."""
    plant_step_seconds: Annotated[int, Field(ge=1, le=3600)] = 60
    """Step of the simulated home inside a control step (relays, thermostats, limits); divides the control step [s]."""
    weather: str = "amsterdam-iwec"
    """A built-in weather set or a CSV file: ``time, T_out, ghi [, dni, dhi, wind_speed]``."""
    prices: str = "cz-spot-2024"
    """A built-in price model or a CSV file: ``time, price_import, price_export``."""
    load: str = "h25"
    """A built-in household-load profile or a CSV file: ``time, P_load``."""
    load_kwh_per_year: Annotated[float, Field(ge=0)] = 4000.0
    """Annual household consumption a built-in profile is scaled to [kWh]."""
    heating: bool = True
    """False: a run without heating (the heaters are off whatever the controller asks)."""
    controller: str = "rule-based"
    """Controller of ``pems simulate`` when ``--controller`` is not given."""
    comfort: Comfort = Field(default_factory=Comfort)
    """Comfort bands and their schedule."""
    tariff: Tariff = Field(default_factory=Tariff)
    """Figures of the built-in price models."""
    initial: Initial = Field(default_factory=Initial)
    """The state the run starts from."""
    forecast: ForecastSpec = Field(default_factory=ForecastSpec)
    """The forecasts controllers receive."""
    mpc: MpcSpec = Field(default_factory=MpcSpec)
    """Settings of the ``mpc`` and ``oracle`` controllers."""
    truth: Truth | None = None
    """Heat the true home has and the controllers' model does not know; learning controllers learn it from a history logged before the start."""

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
    house = load_house(sc.house, base_dir=path.parent, source=path)
    return checked_scenario(sc, house, path)


def checked_scenario(sc: Scenario, house: House, path: Path) -> LoadedScenario:
    """A validated scenario with its house (the scenario's cars added), checked against each other
    and against its sources; problems are named by ``path`` and key."""
    if sc.ev:  # the scenario's cars beside the house's own
        try:
            house = House.model_validate(house.model_dump() | {"ev": [*house.model_dump()["ev"],
                                                                      *(e.model_dump() for e in sc.ev)]})
        except ValueError as exc:
            raise InputError(path, "ev", str(exc)) from None
    if sc.forecast.model == "archived":
        raise InputError(path, "forecast.model", "'archived' forecasts come with a home's history: pems replay "
                                                 "--forecast archived; a scenario file takes perfect, persistence, "
                                                 "noisy or learned")
    _check_sources(sc, path)
    _check_against_house(sc, house, path)
    from pems.scenarios.comfort import warn_comfort

    warn_comfort(sc.comfort, house, path)
    steps = sc.days * 1440 / sc.step_minutes
    if abs(steps - round(steps)) > 1e-6:
        raise InputError(path, "days", f"{sc.days:g} days is not a whole number of {sc.step_minutes}-minute "
                                       "steps; the run would end past its last day")
    if sc.step_minutes * 60 % sc.plant_step_seconds:
        raise InputError(path, "plant_step_seconds",
                         f"{sc.plant_step_seconds} s does not divide the control step of {sc.step_minutes} min")
    return LoadedScenario(sc, house, path)


def _check_sources(sc: Scenario, path: Path) -> None:
    """Weather, prices and load: a built-in name or a CSV file that exists (named by this file and key)."""
    from pems.twin.inputs import check_sources

    check_sources(sc, path.parent, path)


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
