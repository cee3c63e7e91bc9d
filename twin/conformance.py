"""The Plant contract, checked: one run of standard actions that every home must answer alike.

The simulator (:class:`~pems.twin.plant.SimulatedHome`), a live home over the emulator's sockets
(:class:`~pems.live.home.LiveHome`) and the live home in its safety and logging wrappers all pass
:func:`check_plant`; a controller written against one then means the same against the others.

The run (six control steps, each of them a different kind of command):

1. every heater at its rating, the battery charging at half its limit;
2. heaters off, the battery discharging at half its limit;
3. heaters at half their rating, the battery held;
4. set-points of 30 °C (the thermostats heat throughout);
5. set-points of 5 °C (the thermostats keep the heaters off);
6. no heating command (a simulated home leaves its heaters off; a live one runs itself).

What every observation must satisfy:

- its time is the step's start, exactly one control step after the last one, on the step grid;
- room temperatures are finite, one per room, and move less than 5 K in a step;
- the state of charge is None without a battery, within [0, 1] with one;
- heating is one value per room within [0, rating]; a power command is realised to within one
  relay tick of each room's on-time (the live home's resolution), and a set-point far above or below
  the room heats fully or not at all;
- the battery moves in the commanded direction (unless at its SOC limit) and within its power limits;
- the power balance holds: ``P_grid − (P_load + ΣP_heat + P_bat − P_pv)`` is the inverter's loss,
  never negative and never more than its standby power plus ``loss_share`` of the power converted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from pems.twin.model import HouseModel
from pems.twin.plant import Plant
from pems.twin.signals import Action, Observation


@dataclass
class ConformanceReport:
    """What :func:`check_plant` saw: the observations and every violation of the contract."""

    observations: list[Observation] = field(default_factory=list)
    actions: list[Action] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations


def standard_actions(model: HouseModel) -> list[Action]:
    """The six commands of the run (see the module notes)."""
    rating = np.asarray(model.u_max[model.heat], dtype=float)
    n = len(rating)
    lim = model.limits
    charge = 0.5 * lim.max_charge_w if model.has_battery else None
    discharge = -0.5 * lim.max_discharge_w if model.has_battery else None
    hold = 0.0 if model.has_battery else None
    return [
        Action(heat_w=rating.copy(), bat_w=charge),
        Action(heat_w=np.zeros(n), bat_w=discharge),
        Action(heat_w=0.5 * rating, bat_w=hold),
        Action(heat_setpoint_c=np.full(n, 30.0)),
        Action(heat_setpoint_c=np.full(n, 5.0)),
        Action(),
    ]


def check_plant(plant: Plant, model: HouseModel, step_s: float, tick_s: float, balance_tol_w: float = 1.0,
                loss_share: float = 0.15, actions: list[Action] | None = None) -> ConformanceReport:
    """Run ``plant`` through the standard actions and report every breach of the Plant contract.

    Parameters
    ----------
    plant
        A home not yet reset.
    model
        Its house model (room order, ratings, battery limits).
    step_s
        The control step [s].
    tick_s
        The relay resolution [s] (the simulator's fine step, the live home's inner tick): a power
        command is realised to within one tick of on-time per room.
    balance_tol_w
        Slack of the power balance [W] (sensor and register resolution of a live home).
    loss_share
        Largest conversion loss, as a share of the power the inverter converts.
    actions
        Other commands than :func:`standard_actions` (the checks of realisation apply to those kinds).
    """
    rep = ConformanceReport()
    bad = rep.violations
    if not isinstance(plant, Plant):
        bad.append(f"{type(plant).__name__} does not implement reset() and step(action)")
        return rep
    rating = np.asarray(model.u_max[model.heat], dtype=float)
    step = pd.Timedelta(seconds=step_s)
    inv = model.house.inverter
    standby_w = inv.standby_w if inv is not None else 0.0
    lim = model.limits
    acts = standard_actions(model) if actions is None else actions
    obs = plant.reset()
    _check_observation(obs, None, model, rating, step, bad, "reset")
    rep.observations.append(obs)
    for k, action in enumerate(acts):
        prev = obs
        obs = plant.step(action)
        where = f"step {k + 1}"
        rep.observations.append(obs)
        rep.actions.append(action)
        if not _check_observation(obs, prev, model, rating, step, bad, where):
            continue
        heat = np.asarray(obs.P_heat, dtype=float)
        tol = rating * (tick_s / step_s) + 1.0
        if action.heat_w is not None:
            want = np.clip(np.asarray(action.heat_w, dtype=float), 0.0, rating)
            off = np.abs(heat - want) > tol
            if off.any():
                bad.append(f"{where}: heating {np.round(heat[off], 1).tolist()} W realised for "
                           f"{np.round(want[off], 1).tolist()} W commanded (tolerance one tick)")
        elif action.heat_setpoint_c is not None:
            sp = np.asarray(action.heat_setpoint_c, dtype=float)
            T = np.asarray(prev.T_room, dtype=float)
            full, none = sp > T + 2.0, sp < T - 2.0
            if (np.abs(heat[full] - rating[full]) > tol[full]).any() or (heat[none] > tol[none]).any():
                bad.append(f"{where}: set-points {sp.tolist()} °C at rooms of {np.round(T, 2).tolist()} °C "
                           f"realised as {np.round(heat, 1).tolist()} W")
        if model.has_battery and action.bat_w is not None and obs.soc is not None and prev.soc is not None:
            p_bat = obs.P_bat
            if p_bat > lim.max_charge_w + balance_tol_w or -p_bat > lim.max_discharge_w + balance_tol_w:
                bad.append(f"{where}: battery power {p_bat:.0f} W beyond its limits")
            room_up, room_down = prev.soc < lim.soc_max - 0.02, prev.soc > lim.soc_min + 0.02
            if action.bat_w > 0 and room_up and p_bat <= 0:
                bad.append(f"{where}: battery commanded to charge {action.bat_w:.0f} W, measured {p_bat:.0f} W")
            if action.bat_w < 0 and room_down and p_bat >= 0:
                bad.append(f"{where}: battery commanded to discharge {-action.bat_w:.0f} W, measured {p_bat:.0f} W")
        converted = abs(obs.P_bat) + obs.P_pv
        loss = obs.P_grid - (obs.P_load + float(heat.sum()) + obs.P_bat - obs.P_pv)
        most = standby_w + loss_share * converted + balance_tol_w
        if not -balance_tol_w <= loss <= most:
            bad.append(f"{where}: power balance off: P_grid − (P_load + ΣP_heat + P_bat − P_pv) = {loss:.1f} W "
                       f"(a loss of 0 to {most:.0f} W: standby, {loss_share:.0%} of the {converted:.0f} W "
                       "converted and the tolerance)")
    return rep


def _check_observation(obs: object, prev: Observation | None, model: HouseModel, rating: np.ndarray,
                       step: pd.Timedelta, bad: list[str], where: str) -> bool:
    """The checks every observation must pass; False when the rest cannot be checked."""
    if not isinstance(obs, Observation):
        bad.append(f"{where}: returned {type(obs).__name__}, not an Observation")
        return False
    n0 = len(bad)
    t = pd.Timestamp(obs.time)
    if t.tzinfo is None:
        bad.append(f"{where}: time {t} has no time zone")
    elif t != t.floor(step):
        bad.append(f"{where}: time {t} is not on the {step} grid")
    if prev is not None and t - pd.Timestamp(prev.time) != step:
        bad.append(f"{where}: time {t} is not one step after {prev.time}")
    T = np.asarray(obs.T_room, dtype=float)
    if T.shape != (len(rating),) or not np.isfinite(T).all():
        bad.append(f"{where}: room temperatures {T} are not one finite value per room")
    elif prev is not None and np.abs(T - np.asarray(prev.T_room, dtype=float)).max() > 5.0:
        bad.append(f"{where}: a room moved more than 5 K in one step")
    if model.has_battery:
        if obs.soc is None or not 0.0 <= obs.soc <= 1.0:
            bad.append(f"{where}: state of charge {obs.soc} with a battery")
    elif obs.soc is not None:
        bad.append(f"{where}: state of charge {obs.soc} without a battery")
    heat = None if obs.P_heat is None else np.asarray(obs.P_heat, dtype=float)
    if heat is None or heat.shape != rating.shape or not np.isfinite(heat).all():
        bad.append(f"{where}: heating {heat} is not one finite value per room")
    elif (heat < -1.0).any() or (heat > rating + 1.0).any():
        bad.append(f"{where}: heating {np.round(heat, 1).tolist()} W outside [0, rating]")
    if not all(math.isfinite(v) for v in (obs.T_out, obs.P_pv, obs.P_load, obs.P_grid, obs.P_bat)):
        bad.append(f"{where}: a measured power or the outdoor temperature is not finite")
    return len(bad) == n0
