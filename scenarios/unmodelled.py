"""Heat the twin does not know about: the "true" house of the unmodelled-gains scenarios.

A scenario's ``[truth]`` section lists heat sources that act on the simulated home but are absent
from the model the controllers and forecasts use: people and cooking on a schedule, a window the
house file does not have, airing in the morning (a loss). Controllers are measured against this
truth; residual correctors (:mod:`pems.controllers.forecast.correctors`) must learn it from a
history logged before the run (:func:`simulate_history`), as they would from a real home's.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Annotated, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from pems.controllers.forecast.corrector_scores import CorrectorBacktest
from pems.twin.house import House
from pems.twin.model import HouseModel
from pems.twin.plant import SimulatedHome
from pems.twin.signals import Action
from pems.twin.solar import complete_irradiance, plane_irradiance, solar_position

if TYPE_CHECKING:
    from pems.scenarios.spec import LoadedScenario


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class UnmodelledGain(_Strict):
    """One heat source of the true house.

    ``schedule``: ``watts`` (negative for a loss) during each ``[from, to)`` local-hour interval of
    ``hours`` on the given ``days``, multiplied per day by ``1 + day_to_day·N(0, 1)`` (clipped at 0).
    ``window``: an extra window of ``area_m2`` with solar transmittance ``g`` facing ``azimuth_deg``
    (vertical): heat ``= area · g · plane irradiance``.
    """

    room: str
    """The room it heats (or cools), by id."""
    kind: Literal["schedule", "window"] = "schedule"
    """A scheduled source, or a window the house file does not have."""
    watts: float = 0.0
    """``schedule``: heat while on; negative for a loss such as airing [W]."""
    hours: list[tuple[float, float]] = Field(default_factory=list)
    """``schedule``: ``[from, to)`` intervals of local hours, e.g. ``[[6.5, 8.0], [17, 20]]``; ``from > to`` runs past midnight."""
    days: Literal["all", "workdays", "weekends"] = "all"
    """``schedule``: the days it is on (workdays are Monday to Friday)."""
    day_to_day: Annotated[float, Field(ge=0, le=1)] = 0.2
    """``schedule``: relative standard deviation of its daily factor ``1 + day_to_day·N(0, 1)`` [-]."""
    area_m2: Annotated[float, Field(ge=0)] = 0.0
    """``window``: glazed area [m²]."""
    g: Annotated[float, Field(ge=0, le=1)] = 0.6
    """``window``: solar transmittance of the glazing [-]."""
    azimuth_deg: Annotated[float, Field(ge=0, le=360)] = 180.0
    """``window``: direction it faces (vertical): 0 north, 90 east, 180 south [°]."""


class Truth(_Strict):
    """What the simulated home has beyond its model, and the history logged before the run."""

    gains: list[UnmodelledGain] = Field(default_factory=list)
    """The heat sources, one ``[[truth.gains]]`` table each."""
    train_days: Annotated[int, Field(ge=7, le=366)] = 35
    """Days of history logged before the run, under the home's own thermostats, for learning controllers [d]."""
    sensor_noise_k: Annotated[float, Field(ge=0)] = 0.05
    """Standard deviation of the room sensors' noise in that history [K]."""
    quantum_k: Annotated[float, Field(ge=0)] = 0.1
    """Resolution the room sensors round to [K]."""
    seed: int = 0
    """Seed of the day-to-day factors and the sensor noise."""


def unmodelled_gains(truth: Truth, house: House, index: pd.DatetimeIndex, ghi: pd.Series | np.ndarray,
                     step: pd.Timedelta) -> pd.DataFrame:
    """The extra heat per room [W] over ``index`` (step starts, UTC); zero for untouched rooms.

    The day-to-day factors are drawn per local calendar day from ``truth.seed``, so any two
    periods that share days agree on them (the training history and the run).
    """
    out = pd.DataFrame(0.0, index=index, columns=list(house.room_ids))
    if not truth.gains:
        return out
    tz = house.site.timezone
    mid = index + step / 2
    local = mid.tz_convert(tz)
    hour = local.hour + local.minute / 60.0
    weekday = local.day_of_week
    day_no = (local.normalize().tz_localize(None) - pd.Timestamp("2000-01-01")).days.to_numpy()
    ghi = np.asarray(ghi, dtype=float)
    sun = None
    for i, g in enumerate(truth.gains):
        if g.kind == "schedule":
            on = np.zeros(len(index), bool)
            for a, b in g.hours:
                on |= (hour >= a) & (hour < b) if a <= b else (hour >= a) | (hour < b)
            if g.days == "workdays":
                on &= weekday < 5
            elif g.days == "weekends":
                on &= weekday >= 5
            # per-day factor: a hash of (seed, gain, day) → reproducible across periods
            days = np.unique(day_no)
            table = {d: max(0.0, 1.0 + g.day_to_day * np.random.default_rng([truth.seed, i, int(d)]).standard_normal())
                     for d in days}
            factor = np.array([table[d] for d in day_no])
            q = g.watts * on * factor
        else:
            if sun is None:
                sun = solar_position(mid, house.site)
                sun.index = index
                w = complete_irradiance(pd.DataFrame({"ghi": ghi}, index=index), sun)
            q = g.area_m2 * g.g * plane_irradiance(w, sun, 90.0, g.azimuth_deg)["poa_global"].to_numpy()
        out[g.room] = out[g.room].to_numpy() + q
    return out


def add_gains(inputs: pd.DataFrame, gains: pd.DataFrame) -> pd.DataFrame:
    """A copy of a disturbance table with ``gains`` [W] added to its ``Q_int__<room>`` columns."""
    out = inputs.copy()
    for r in gains.columns:
        out[f"Q_int__{r}"] = out[f"Q_int__{r}"].to_numpy() + gains[r].reindex(out.index).fillna(0.0).to_numpy()
    return out


def simulate_history(model: HouseModel, plant_inputs: pd.DataFrame, x0: np.ndarray, step: pd.Timedelta,
                     setpoints: np.ndarray, night_setpoints: np.ndarray, truth: Truth,
                     plant_step_s: float = 60.0) -> tuple[pd.DataFrame, np.ndarray]:
    """Run the true home under its own thermostats and log it as a real home logs itself.

    Returns the history table (``T_room__*`` with sensor noise and quantisation, ``P_heat__*`` as
    relay duty × rating, ``T_out``, ``ghi``, ``P_pv``, ``P_load``, ``P_grid``, ``P_bat``, ``soc``)
    and the true state at its end (the run starts from there).
    """
    rng = np.random.default_rng([truth.seed, 7])
    n = len(plant_inputs)
    local = (plant_inputs.index + step / 2).tz_convert(model.house.site.timezone)
    night = (local.hour < 6) | (local.hour >= 22)
    plant = SimulatedHome(model, plant_inputs, x0, step_s=step.total_seconds(), substep_s=plant_step_s)
    for k in range(n):
        plant.step(Action(heat_setpoint_c=night_setpoints if night[k] else setpoints))
    lg = plant.log
    data = pd.DataFrame(index=pd.DatetimeIndex(plant_inputs.index, name="time"))
    data["T_out"] = plant_inputs["T_out"].to_numpy()
    data["ghi"] = plant_inputs["ghi"].to_numpy()
    for i, r in enumerate(model.rooms):
        t = lg.x_mean[:n, i] + rng.normal(0.0, truth.sensor_noise_k, n)
        data[f"T_room__{r}"] = np.round(t / truth.quantum_k) * truth.quantum_k if truth.quantum_k else t
    for i, r in enumerate(model.rooms):
        data[f"P_heat__{r}"] = lg.u_mean[:n, i]
    y = plant.outputs()
    data["P_pv"] = lg.pv[:n]
    data["P_load"] = plant_inputs["P_load"].to_numpy()
    data["P_grid"] = y["P_grid"].to_numpy()
    data["P_bat"] = y["P_bat"].to_numpy()
    if model.has_battery:
        data["soc"] = lg.x_mean[:n, model.i_soc]
    return data, plant.x.copy()


def training_history(sc: LoadedScenario, model: HouseModel, extra_days: float = 0.0) -> tuple[pd.DataFrame, np.ndarray]:
    """``truth.train_days`` of the true home before the scenario's start, under its thermostats
    (comfort set-points by day, eco at night), and the state it leaves at the start.

    ``extra_days`` continues the same history past the start (the held-out period of
    :func:`corrector_backtest`); the state returned is then the one at the end.
    """
    from pems.scenarios.runner import initial_state
    from pems.twin.inputs import build_inputs
    from pems.scenarios.comfort import comfort_bands

    truth = sc.spec.truth
    step = sc.step
    n_before = int(round(pd.Timedelta(days=truth.train_days) / step))
    n = n_before + int(round(pd.Timedelta(days=extra_days) / step))
    start = sc.start - n_before * step
    # Prices do not drive thermostats (and a price file may not reach back): a flat tariff here.
    inputs = build_inputs(sc.house, dataclasses.replace(sc.input_spec(), prices="flat"), start, n, step)
    gains = unmodelled_gains(truth, sc.house, inputs.index, inputs["ghi"], step)
    plant_inputs = add_gains(inputs, gains)
    low, _ = comfort_bands(sc.spec.comfort, sc.house, inputs.index)
    x0 = initial_state(sc, model, inputs, low)
    day = np.array([r.comfort_c if r.comfort_c is not None else 21.0 for r in sc.house.rooms])
    eco = np.array([r.eco_c if r.eco_c is not None else c - 2.0 for r, c in zip(sc.house.rooms, day)])
    return simulate_history(model, plant_inputs, x0, step, day, eco, truth, sc.spec.plant_step_seconds)


def corrector_backtest(sc: LoadedScenario, settings=None, every: pd.Timedelta = pd.Timedelta(hours=6)) -> CorrectorBacktest:
    """Learn a corrector from the history before the start; score 24 h-ahead predictions of every
    room from origins ``every`` apart over the scenario's days (the home under its thermostats,
    held out from learning), with and without the correction."""
    from pems.controllers.forecast.corrector_scores import score_corrector
    from pems.controllers.forecast.correctors import CorrectorSettings, ResidualCorrector
    from pems.twin.model import build_model

    if sc.spec.truth is None:
        raise ValueError(f"scenario {sc.name!r} has no [truth] section")
    model = build_model(sc.house)
    days = max(float(sc.spec.days), 1.0) + 1.0  # the last origin needs a day ahead of it
    history, _ = training_history(sc, model, extra_days=days)
    train = history.loc[history.index < sc.start]
    corr = ResidualCorrector(model, sc.step, settings or CorrectorSettings()).fit(train)
    end = sc.start + pd.Timedelta(days=days)
    test = history.loc[history.index < end]
    bt = score_corrector(sc.name, model, corr, test, sc.step, sc.start, every)
    held = test.loc[test.index >= sc.start]
    bt.gains_true = unmodelled_gains(sc.spec.truth, sc.house, held.index, held["ghi"], sc.step)
    return bt
