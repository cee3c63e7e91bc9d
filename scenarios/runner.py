"""The closed loop: a scenario's simulated home, a controller, forecasts, and the log they leave.

:func:`prepare` builds everything a scenario needs once (model, disturbance table, comfort bands,
initial state) so that several controllers can run on identical inputs; :func:`run` runs one
controller and returns a :class:`RunResult` with the trajectory (the columns of docs/reference/history.md) and its KPIs.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, fields, replace

import numpy as np
import pandas as pd

from pems.controllers import make_controller
from pems.controllers.base import Controller, Learner, Privileged, Reporter
from pems.memory import small_pages
from pems.scenarios.comfort import comfort_bands
from pems.scenarios.forecast import ForecastProvider, forecast_provider
from pems.scenarios.kpis import compute_kpis, ev_kpis
from pems.scenarios.spec import LoadedScenario
from pems.twin.inputs import build_inputs
from pems.twin.model import HouseModel, build_model
from pems.twin.plant import SimulatedHome, Turn, closed_loop
from pems.twin.signals import Action, Forecast, Observation
from pems.twin.steady import steady_state

ProgressFn = Callable[[int, int], None]


@dataclass(frozen=True)
class Prepared:
    """A scenario made concrete: model, inputs over run + horizon, bands and initial state."""

    scenario: LoadedScenario
    model: HouseModel
    inputs: pd.DataFrame  # n_steps + horizon rows
    comfort_low: pd.DataFrame
    comfort_high: pd.DataFrame
    x0: np.ndarray
    plant_inputs: pd.DataFrame | None = None  # the true home's disturbances, when it has unmodelled heat
    history: pd.DataFrame | None = None  # logged before the start (scenarios with a [truth] section)
    relay0: np.ndarray | None = None  # the thermostats' relays at the start (a replay: as the history left them)
    forecast_inputs: pd.DataFrame | None = None  # a replay's disturbances as archived forecasts saw them (model order)

    @property
    def n_steps(self) -> int:
        return self.scenario.n_steps


@dataclass
class RunResult:
    """One controller on one scenario."""

    scenario: str
    controller: str
    trajectory: pd.DataFrame
    kpis: dict[str, float]
    events: list[dict]
    wall_s: float
    rooms: tuple[str, ...]
    currency: str = "EUR"
    x_end: np.ndarray | None = None  # the plant's state after the last step (model order)


def prepare(sc: LoadedScenario) -> Prepared:
    """Model, disturbances (run plus forecast horizon), comfort bands and the initial state."""
    model = build_model(sc.house)
    if not sc.spec.heating:
        model = model.without_heating()
    n_total = sc.n_steps + sc.horizon_steps
    inputs = build_inputs(sc.house, sc.input_spec(), sc.start, n_total, sc.step, required_steps=sc.n_steps)
    low, high = comfort_bands(sc.spec.comfort, sc.house, inputs.index)
    x0 = initial_state(sc, model, inputs, low)
    truth = sc.spec.truth
    if truth is None:
        return Prepared(sc, model, inputs, low, high, x0)
    from pems.scenarios.unmodelled import add_gains, training_history, unmodelled_gains

    # The true home: the same physics plus heat the model does not know. It has run under its own
    # thermostats before the start; that history is what learning controllers may learn from, and
    # every controller starts from the state it left.
    history, x0 = training_history(sc, model)
    gains = unmodelled_gains(truth, sc.house, inputs.index, inputs["ghi"], sc.step)
    return Prepared(sc, model, inputs, low, high, x0, add_gains(inputs, gains), history)


def initial_state(sc: LoadedScenario, model: HouseModel, inputs: pd.DataFrame,
                  low: pd.DataFrame) -> np.ndarray:
    ini = sc.spec.initial
    rooms = model.rooms
    if ini.mode == "settled":
        day = inputs.iloc[: max(1, int(pd.Timedelta(days=1) / sc.step))]
        d = day[list(model.sym.d.names)].mean().to_numpy()
        target = low.iloc[0].to_numpy() + 0.5
        x, _ = steady_state(model, d, target, soc=ini.soc)
        return _cars_at_target(model, x)
    x = np.zeros(len(model.sym.x))
    t_room = _per_room(ini.T_room, rooms)
    x[model.air] = t_room
    x[model.mass] = t_room if ini.T_mass is None else _per_room(ini.T_mass, rooms, t_room)
    if model.has_battery:
        lim = model.limits
        x[model.i_soc] = ini.soc if ini.soc is not None else 0.5 * (lim.soc_min + lim.soc_max)
    return _cars_at_target(model, x)


def _cars_at_target(model: HouseModel, x: np.ndarray) -> np.ndarray:
    """The cars start at their target state of charge (as after a night at home)."""
    x = np.asarray(x, dtype=float).copy()
    for car, i in zip(model.house.ev, model.i_ev_soc):
        x[i] = car.target_soc
    return x


def _per_room(v: float | dict[str, float], rooms: tuple[str, ...], default: np.ndarray | None = None) -> np.ndarray:
    if isinstance(v, dict):
        base = default.copy() if default is not None else np.full(len(rooms), 21.0)
        for i, r in enumerate(rooms):
            if r in v:
                base[i] = v[r]
        return base
    return np.full(len(rooms), float(v))


def run(prep: Prepared, controller: str | Controller, progress: ProgressFn | None = None) -> RunResult:
    """Run one controller over the scenario; KPIs come from the plant's log."""
    sc, model = prep.scenario, prep.model
    if isinstance(controller, str):
        ctrl = make_controller(controller, model, sc.step.total_seconds(), sc.spec.mpc.model_dump())
    else:
        ctrl = controller
    if isinstance(ctrl, Learner) and ctrl.learns_from_history:
        if prep.history is None:
            raise ValueError(f"controller {ctrl.name!r} learns from a history; the scenario has no [truth] section")
        ctrl.learn(prep.history)
    plant_inputs = prep.plant_inputs if prep.plant_inputs is not None else prep.inputs
    forecasts = forecast_provider(sc, prep)
    plant = SimulatedHome(model, plant_inputs, prep.x0, step_s=sc.step.total_seconds(),
                          substep_s=sc.spec.plant_step_seconds, relay0=prep.relay0,
                          d_table=forecasts.D if plant_inputs is prep.inputs else None)
    # The perfect-foresight bound sees the true home, unmodelled heat included.
    truth_fc = forecasts if prep.plant_inputs is None else ForecastProvider(
        sc.spec.forecast.model_copy(update={"model": "perfect"}), plant_inputs, model.sym.d.names,
        prep.comfort_low, prep.comfort_high, sc.horizon_steps, sc.step)
    ctrl.reset()
    n = prep.n_steps
    compute = np.zeros(n)
    # The oracle sees the whole true future of the run; privileged controllers see the true state.
    full = isinstance(ctrl, Privileged) and ctrl.full_horizon
    privileged = isinstance(ctrl, Privileged) and (full or ctrl.privileged)

    def decide(k: int, obs: Observation) -> tuple[Forecast, Action]:
        fc = truth_fc.perfect(k, n) if full else forecasts(k)
        if privileged:
            fc.extras["x_true"] = plant.x.copy()
        return fc, ctrl.act(obs, fc)

    def after(turn: Turn) -> None:
        compute[turn.k] = turn.compute_s
        if progress is not None:
            progress(turn.k + 1, n)

    t_start = time.perf_counter()
    try:
        closed_loop(plant, decide, n, after)
    finally:
        if isinstance(controller, str) and callable(getattr(ctrl, "close", None)):
            ctrl.close()  # a controller made here with a process of its own (a peer): ours to end
    wall = time.perf_counter() - t_start
    traj = trajectory(prep, plant, compute, release=True)
    bat, lim = model.house.battery, model.limits
    usable = bat.capacity_kwh * (lim.soc_max - lim.soc_min) if bat else None
    kpis = compute_kpis(traj, model.rooms, usable)
    kpis |= ev_kpis(traj, model.house.ev)
    own = ctrl.events if isinstance(ctrl, Reporter) else []
    events = sorted(plant.log.events + list(own), key=lambda e: e["time"])
    return RunResult(sc.name, ctrl.name, traj, kpis, events, wall, model.rooms, sc.spec.tariff.currency,
                     x_end=plant.x.copy())


def _root(a: np.ndarray) -> object:
    """The array whose memory ``a`` views (``a`` itself when it owns its memory)."""
    while isinstance(a, np.ndarray) and a.base is not None:
        a = a.base
    return a


def trajectory(prep: Prepared, plant: SimulatedHome, compute_s: np.ndarray, release: bool = False) -> pd.DataFrame:
    """The trajectory table (docs/reference/history.md) from the plant's log: one row per step, means over it.

    ``release``: the plant's per-step log is consumed (its arrays dropped, its events kept) and each of
    its arrays is freed as soon as its columns are in the table, so that a year's log and table (35 and
    37 MB for the reference house) are not held at once; for a run that is over."""
    model, lg, n = prep.model, plant.log, plant.k
    index = prep.inputs.index[:n]
    y = plant.outputs(("P_grid", "P_bat", "P_loss"))
    inp = prep.inputs.iloc[:n]
    cols: dict[str, np.ndarray] = {
        "T_out": inp["T_out"].to_numpy(), "ghi": inp["ghi"].to_numpy(),
    }
    x, u = lg.x_mean[:n], lg.u_mean[:n]
    for i, r in enumerate(model.rooms):
        cols[f"T_room__{r}"] = x[:, i]
    for i, r in enumerate(model.rooms):
        cols[f"T_mass__{r}"] = x[:, model.n_rooms + i]
    for i, r in enumerate(model.rooms):
        cols[f"P_heat__{r}"] = u[:, i]
        cols[f"P_heat_cmd__{r}"] = lg.heat_cmd[:n, i]
        cols[f"T_setpoint__{r}"] = lg.setpoint[:n, i]
        cols[f"T_set_low__{r}"] = prep.comfort_low[r].to_numpy()[:n]
        cols[f"T_set_high__{r}"] = prep.comfort_high[r].to_numpy()[:n]
    cols["P_pv"] = lg.pv[:n]
    cols["P_pv_avail"] = inp["P_pv"].to_numpy()
    cols["P_load"] = inp["P_load"].to_numpy()
    if model.cars:
        # P_load is all but the heating, the cars' charging included (the energy balance's terms);
        # the household's own and each car's are their own columns
        cols["P_load_household"] = cols["P_load"].copy()
        x_start = np.vstack([plant.x0[None, :], lg.x_end[:n - 1]]) if n else lg.x_end[:0]
        for c, i_u, i_x in zip(model.cars, model.i_ev, model.i_ev_soc):
            cols[f"P_ev__{c}"] = u[:, i_u]
            cols[f"ev_soc__{c}"] = x_start[:, i_x]  # at the step's start: what a departure leaves with
            cols[f"ev_soc_end__{c}"] = lg.x_end[:n, i_x]
            cols[f"ev_plugged__{c}"] = inp[f"ev_plugged__{c}"].to_numpy()
            cols[f"ev_need_wh__{c}"] = inp[f"ev_need_wh__{c}"].to_numpy()
            cols["P_load"] = cols["P_load"] + u[:, i_u]
    cols["P_grid"] = y["P_grid"].to_numpy()
    cols["P_import"] = np.clip(cols["P_grid"], 0, None)
    cols["P_export"] = np.clip(-cols["P_grid"], 0, None)
    cols["P_bat"] = y["P_bat"].to_numpy()
    cols["P_bat_cmd"] = lg.bat_cmd[:n]
    cols["P_loss"] = y["P_loss"].to_numpy()
    if model.has_battery:
        cols["soc"] = x[:, model.i_soc]
        cols["soc_end"] = lg.x_end[:n, model.i_soc]
    else:
        cols["soc"] = np.full(n, np.nan)
        cols["soc_end"] = np.full(n, np.nan)
    cols["price_import"] = inp["price_import"].to_numpy()
    cols["price_export"] = inp["price_export"].to_numpy()
    cols["curtailed_wh"] = lg.curtailed_wh[:n]
    cols["shed_wh"] = lg.shed_wh[:n]
    cols["relay_switches"] = lg.relay_switches[:n]
    cols["compute_s"] = compute_s[:n]
    # one float block made once (from a dict, pandas stacks the columns and may copy them again), column
    # by column (Fortran order: a column's pages are touched only when it is written)
    ints = {"relay_switches": cols.pop("relay_switches").copy()}
    names = list(cols)
    order = list(range(len(names)))
    if release:  # the log's last references are the columns' views: each array goes with its last column
        logged = {id(a) for a in (getattr(lg, f.name) for f in fields(lg)) if isinstance(a, np.ndarray)}
        plant.log = replace(lg, **{f.name: None for f in fields(lg) if f.name != "events"})
        del lg, x, u, y
        # the log's columns first, an array at a time (each freed as the table grows), then the rest;
        # of the log's arrays first those that free the most for what they add (the state at each
        # step's end gives the table the battery's column: its 10 MB go for 0.3)
        root = [_root(cols[c]) for c in names]
        rid, size = [id(r) for r in root], {id(r): r.nbytes for r in root}  # ids and sizes: no reference kept
        del root
        taken = Counter(rid)
        order.sort(key=lambda j: (rid[j] not in logged, taken[rid[j]] * 8 * n - size[rid[j]], rid[j]))
    with small_pages():  # filled in no order of its pages: each page resident only once written
        block = np.empty((n, len(names)), order="F")
    for j in order:
        block[:, j] = cols.pop(names[j])
    traj = pd.DataFrame(block, index=pd.DatetimeIndex(index, name="time"), columns=names, copy=False)
    for c, v in ints.items():
        traj.insert(names.index("shed_wh") + 1, c, v)
    traj.attrs["timezone"] = model.house.site.timezone
    # where the weather came from and how it was brought to the house (the report says so)
    traj.attrs["weather"] = "; ".join(x for x in (prep.inputs.attrs.get("weather_source", ""),
                                                   prep.inputs.attrs.get("weather_alignment", "")) if x)
    return traj
