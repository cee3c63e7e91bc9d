"""Histories made by the twin itself with hidden parameters: the ground truth calibration is tested on.

A house's parameters are perturbed (hidden from the calibrator), the home is run under its own
thermostats with night set-back on real weather, unmodelled occupancy gains are added that no
prior knows of, and the measurements are logged as a real home logs them: room sensors with noise
and 0.1 K quantisation, heating as relay duty × rating.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from pems.twin.house import House
from pems.twin.inputs import InputSpec, build_inputs, measured_disturbances
from pems.twin.model import HouseModel, build_model
from pems.twin.plant import SimulatedHome
from pems.twin.signals import Action
from pems.twin.steady import steady_state

#: Parameters perturbed per room (multiplicatively, log-normal).
HIDDEN = ("C_air", "C_mass", "H_am", "H_out", "H_ground", "A_sol")


@dataclass(frozen=True)
class SyntheticHistory:
    """A history table and the truth behind it."""

    data: pd.DataFrame  # canonical history columns, one row per step
    house: House  # what the calibrator is given (priors only)
    truth: HouseModel  # the model that made the data
    extra_gains: pd.DataFrame  # the unmodelled gains per room [W]


def make_history(house: House, start: str | pd.Timestamp, days: float, seed: int = 0,
                 spread: float = 0.3, sensor_noise_k: float = 0.05, quantum_k: float = 0.1,
                 occupancy_w: float = 80.0, weather: str = "amsterdam-iwec",
                 step: pd.Timedelta = pd.Timedelta(minutes=15), setback_k: float = 2.0,
                 plant_step_s: float = 60.0, true_params: dict[str, float] | None = None,
                 occupancy_day_sd: float = 0.3) -> SyntheticHistory:
    """Simulate ``days`` of a home whose true parameters differ from ``house``'s priors.

    Parameters
    ----------
    spread
        Log-normal standard deviation of the hidden parameters around the priors.
    occupancy_w
        Scale of the unmodelled gains: per room an evening-and-morning pattern with a random
        amplitude up to this value and day-to-day variation [W].
    occupancy_day_sd
        Day-to-day variation of that pattern: its daily scale is 1 + this × N(0, 1) [-].
    setback_k
        Night set-back of the thermostats [K] (22:00–06:00 local time).
    true_params
        Room parameters the truth has in every room, whatever the house file says (e.g.
        ``{"f_heat_mass": 0.0}``: heat into the air, as convectors put it), by name as in
        ``[rooms.params]``.
    """
    rng = np.random.default_rng(seed)
    prior = build_model(house)
    values = {}
    for name in prior.sym.p.names:
        base = name.split("__", 1)[0]
        if base in HIDDEN or base == "H":
            values[name] = prior.param(name) * float(np.exp(rng.normal(0.0, spread)))
        if true_params and base in true_params:
            values[name] = float(true_params[base])
    truth = prior.with_parameters(values)
    t0 = pd.Timestamp(start)
    t0 = t0.tz_localize("UTC") if t0.tz is None else t0.tz_convert("UTC")
    n = int(round(pd.Timedelta(days=days) / step))
    source = build_inputs(house, InputSpec(weather=weather, prices="flat", load="h25"), t0, n, step)
    # The home's own weather station: the sun on its windows is computed at the house, from the
    # measured temperature and global irradiance, exactly as the calibrator will see them.
    inputs = measured_disturbances(house, source[["T_out", "ghi", "P_load", "P_pv"]], step)
    # Unmodelled gains: people come and go, cook, shower: an evening and a morning bump per room.
    local = inputs.index.tz_convert(house.site.timezone)
    hour = local.hour + local.minute / 60
    bump = np.exp(-0.5 * ((hour - 19.0) / 2.0) ** 2) + 0.6 * np.exp(-0.5 * ((hour - 7.0) / 1.0) ** 2)
    day = (inputs.index - inputs.index[0]).days
    extra = {}
    for r in house.room_ids:
        amp = rng.uniform(0.2, 1.0) * occupancy_w
        daily = 1.0 + occupancy_day_sd * rng.standard_normal(int(day.max()) + 1)
        extra[r] = amp * bump * np.clip(daily[day], 0.0, None)
        inputs[f"Q_int__{r}"] = inputs[f"Q_int__{r}"] + extra[r]
    # Thermostats with night set-back, as the home runs them.
    comfort = np.array([r.comfort_c if r.comfort_c is not None else 21.0 for r in house.rooms])
    eco = np.array([r.eco_c if r.eco_c is not None else c - setback_k for r, c in zip(house.rooms, comfort)])
    night = (hour < 6) | (hour >= 22)
    d0 = inputs[list(truth.sym.d.names)].iloc[:96].mean().to_numpy()
    x0, _ = steady_state(truth, d0, comfort)
    plant = SimulatedHome(truth, inputs, x0, step_s=step.total_seconds(), substep_s=plant_step_s)
    for k in range(n):
        plant.step(Action(heat_setpoint_c=eco if night[k] else comfort))
    lg = plant.log
    data = pd.DataFrame(index=inputs.index)
    data["T_out"] = source["T_out"] + rng.normal(0, 0.1, n)
    data["ghi"] = source["ghi"]
    for i, r in enumerate(truth.rooms):
        t = lg.x_mean[:, i] + rng.normal(0.0, sensor_noise_k, n)
        data[f"T_room__{r}"] = np.round(t / quantum_k) * quantum_k if quantum_k else t
    for i, r in enumerate(truth.rooms):
        data[f"P_heat__{r}"] = lg.u_mean[:, i]
    y = plant.outputs()
    data["P_pv"] = lg.pv
    data["P_load"] = source["P_load"]
    data["P_grid"] = y["P_grid"].to_numpy()
    data["P_bat"] = y["P_bat"].to_numpy()
    if truth.has_battery:
        data["soc"] = lg.x_mean[:, truth.i_soc]
    data.index.name = "time"
    return SyntheticHistory(data, house, truth, pd.DataFrame(extra, index=inputs.index))
