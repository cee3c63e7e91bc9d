"""The MPC's LP path: the same optimum as the NLP path, hot starts that change nothing, a fallback
chain whose every link is forced, and limits declared once on the model."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from helpers import BATTERY_HOUSE, house_from, write_constant_inputs, write_scenario
from pems.controllers.lp import Blocking, HorizonLP, NotLinear, linear_stage
from pems.controllers.mpc import EconomicMPC, MpcConfig
from pems.controllers.ocp import Weights, decision_variables, discretise
from pems.controllers.oracle import solve_plan
from pems.live.emulator import battery_ratings
from pems.scenarios.forecast import forecast_provider
from pems.scenarios.runner import prepare, run
from pems.scenarios.spec import load_scenario
from pems.twin.model import TIME_OF_DAY, build_model
from pems.twin.plant import SimulatedHome
from pems.twin.signals import Action, Forecast, Observation

# two rooms, PV, a battery, a fuse and an export limit below the inverter's rating (curtailment)
ELECTRIC = {**BATTERY_HOUSE, "grid": {"import_limit_w": 6000, "export_limit_w": 2000}}
HEAT_PUMP = {**ELECTRIC, "heating": {"kind": "heat_pump", "eta_carnot": 0.45, "supply_temp_c": 35.0}}
START = pd.Timestamp("2024-01-10T00:00:00Z")


def random_forecast(model, n: int, rng: np.random.Generator) -> Forecast:
    """Weather, gains, PV, load, prices and comfort bands drawn at random (hourly prices and
    bands, a daily sun), within what a real home sees."""
    idx = pd.date_range(START, periods=n, freq="15min", name="time")
    names = model.sym.d.names
    h = np.asarray(idx.hour + idx.minute / 60)
    sun = np.clip(np.sin(np.pi * (h - 7) / 10), 0, None) * rng.uniform(0.2, 1.0)
    d = np.zeros((n, len(names)))
    d[:, names.index("T_out")] = rng.uniform(-12, 12) + rng.uniform(2, 6) * np.sin(2 * np.pi * (h - 9) / 24) \
        + rng.normal(0, 0.5, n)
    d[:, names.index("T_ground")] = 10.0
    for i, c in enumerate(names):
        if c.startswith("I_sol__"):
            d[:, i] = 500 * sun
        elif c.startswith("Q_int__"):
            d[:, i] = rng.uniform(0, 150, n)
    d[:, names.index("P_pv")] = 4500 * sun
    d[:, names.index("P_load")] = rng.uniform(150, 1500, n)
    w = 2 * np.pi * h / 24
    for c, v in zip(TIME_OF_DAY, (np.cos(w), np.sin(w), np.cos(2 * w), np.sin(2 * w))):
        d[:, names.index(c)] = v
    hourly = np.repeat(np.arange(n // 4 + 1), 4)[:n]
    pi = rng.uniform(0.05, 0.45, hourly.max() + 1)[hourly]
    pe = rng.uniform(0.0, 0.08, hourly.max() + 1)[hourly]
    six = np.repeat(np.arange(n // 24 + 1), 24)[:n]
    low = rng.choice([18.0, 19.5, 20.5, 21.5], size=(six.max() + 1, model.n_rooms))[six]
    return Forecast(index=idx, d=d, d_names=names, price_import=pi, price_export=pe, low=low, high=low + 3.0,
                    rooms=model.rooms)


def random_state(model, rng: np.random.Generator) -> np.ndarray:
    x = np.zeros(len(model.sym.x))
    x[model.air] = rng.uniform(18.0, 23.0, model.n_rooms)
    x[model.mass] = rng.uniform(18.0, 26.0, model.n_rooms)
    if model.has_battery:
        x[model.i_soc] = rng.uniform(0.1, 0.9)
    return x


def observe(model, x: np.ndarray, fc: Forecast) -> Observation:
    return Observation(time=fc.index[0], T_room=x[model.air], soc=float(x[model.i_soc]) if model.has_battery else None,
                       T_out=float(fc.column("T_out")[0]), P_heat=np.zeros(model.n_rooms))


def solve_once(mpc: EconomicMPC, x: np.ndarray, fc: Forecast):
    fc = dataclasses.replace(fc, extras={"x_true": x})
    mpc.act(observe(mpc.model, x, fc), fc)
    return mpc.last_solution


# ---------------------------------------------------------------------------------------------- the optimum

@pytest.mark.slow
@pytest.mark.parametrize("house", [ELECTRIC, HEAT_PUMP], ids=["electric", "heat-pump"])
@pytest.mark.parametrize("hours", [24, 48])
def test_lp_path_has_the_nlp_paths_optimum(house, hours):
    """The same OCP, solved by the LP path (HiGHS, compact LP, no move blocking) and by the NLP path
    (do-mpc collocation, IPOPT), on random forecasts, prices and states: the same optimal objective."""
    model = build_model(house_from(house))
    rng = np.random.default_rng(hours + len(house))
    lp = EconomicMPC(model, 900.0, MpcConfig(horizon_hours=hours, fine_hours=hours, use_true_state=True))
    cfg = MpcConfig(horizon_hours=hours, solver="ipopt", use_true_state=True)
    cfg.ipopt.update({"ipopt.tol": 1e-10, "ipopt.constr_viol_tol": 1e-10})  # IPOPT's 1e-4 default is loose
    nlp = EconomicMPC(model, 900.0, cfg)
    assert (lp.path, nlp.path) == ("lp", "nlp") and lp.blocking.n_stages == 4 * hours
    assert lp.lp.varying == (house is HEAT_PUMP)  # the COP follows the forecast: coefficients change
    for _ in range(3):
        fc, x = random_forecast(model, 4 * hours + 8, rng), random_state(model, rng)
        a, b = solve_once(lp, x, fc), solve_once(nlp, x, fc)
        assert a.solver == "highs" and b.solver == "ipopt"
        assert a.objective == pytest.approx(b.objective, rel=1e-6, abs=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("house", [ELECTRIC, HEAT_PUMP], ids=["electric", "heat-pump"])
def test_hot_start_reaches_the_cold_solves_optimum(house):
    """A simulated day of steps: the MPC's hot-started LP and a cold solve of the same LP agree on
    the optimal cost at every step (the basis it starts from changes the path, not the optimum)."""
    model = build_model(house_from(house))
    rng = np.random.default_rng(7)
    n = 96
    fc_all = random_forecast(model, n + 96, rng)
    D = pd.DataFrame(fc_all.d, index=fc_all.index, columns=list(model.sym.d.names))
    plant = SimulatedHome(model, D, random_state(model, rng))
    mpc = EconomicMPC(model, 900.0, MpcConfig(use_true_state=True))
    cold = HorizonLP(model, 900.0, mpc.config.weights, mpc.vars, mpc.blocking, max_stage_steps=4)
    obs = plant.reset()
    hot_iterations = []
    for k in range(n):
        fc = Forecast(index=fc_all.index[k:k + 96], d=fc_all.d[k:k + 96], d_names=fc_all.d_names,
                      price_import=fc_all.price_import[k:k + 96], price_export=fc_all.price_export[k:k + 96],
                      low=fc_all.low[k:k + 96], high=fc_all.high[k:k + 96], rooms=model.rooms,
                      extras={"x_true": plant.x.copy()})
        a = mpc.act(obs, fc)
        hot = mpc.last_solution
        x0 = fc.extras["x_true"].copy()
        x0[model.i_soc] = np.clip(x0[model.i_soc], 0.1, 0.9)
        cold.update(x0, fc, blocking=mpc.blocking)  # the stage before the hourly ones follows the clock
        ref = cold.solve(hot=False)
        assert hot.optimal and ref.optimal
        assert hot.objective == pytest.approx(ref.objective, rel=1e-7, abs=1e-7), k
        hot_iterations.append(hot.iterations)
        obs = plant.step(a)
    assert not mpc.events
    assert np.median(hot_iterations[1:]) < 0.5 * ref.iterations  # the hot start does save work


# ---------------------------------------------------------------------------------------------- linear or not

def test_the_ocp_is_checked_for_linearity_when_the_controller_is_built():
    electric, hp = build_model(house_from(ELECTRIC)), build_model(house_from(HEAT_PUMP))
    assert EconomicMPC(electric, 900.0).path == "lp"
    ls = linear_stage(discretise(hp, 900.0), Weights(), decision_variables(hp, Weights()))
    assert ls.varying[ls.rows > 0].any()  # the heat pump's heater coefficients follow the forecast
    w = Weights(comfort_quadratic=1.0)
    with pytest.raises(NotLinear, match="stage cost"):
        linear_stage(discretise(electric, 900.0), w, decision_variables(electric, w))
    with pytest.raises(NotLinear):
        EconomicMPC(electric, 900.0, MpcConfig(weights=w, solver="lp"))


@pytest.mark.slow
def test_a_quadratic_comfort_term_takes_the_nlp_path(tmp_path):
    write_constant_inputs(tmp_path, str(START), 0.5, T_out=-5.0)
    sc = load_scenario(write_scenario(tmp_path, ELECTRIC, start=str(START), days=0.5,
                                      mpc={"comfort_quadratic": 4.0, "horizon_hours": 6}))
    r = run(prepare(sc), "mpc")
    assert not [e for e in r.events if e["kind"] in ("fallback", "solver_retry")]
    assert r.kpis["discomfort_Kh"] < 0.5


# ---------------------------------------------------------------------------------------------- fallbacks

@pytest.fixture
def small():
    model = build_model(house_from(ELECTRIC))
    rng = np.random.default_rng(3)
    return model, random_forecast(model, 96 + 8, rng), random_state(model, rng)


def _links(mpc: EconomicMPC) -> list[tuple[str, str]]:
    return [(e["kind"], e.get("failed", "")) for e in mpc.events]


@pytest.mark.slow
def test_an_infeasible_step_runs_down_the_whole_chain_to_rule_based(small):
    """A load the main fuse cannot carry, even with the battery discharging at full power: the hot
    LP, the cold LP and IPOPT each fail and say why; the plant gets the rule-based action."""
    model, fc, x = small
    d = fc.d.copy()
    d[:4, model.sym.d.index("P_load")] = 6000 + 3000 + 2000  # fuse 6 kW, battery 3 kW: infeasible
    fc = dataclasses.replace(fc, d=d)
    mpc = EconomicMPC(model, 900.0, MpcConfig())
    a = mpc.act(observe(model, x, fc), fc)
    assert _links(mpc) == [("solver_retry", "lp-hot"), ("solver_retry", "lp-cold"), ("fallback", "")]
    reason = mpc.events[-1]["reason"]
    assert "lp-hot: HiGHS Infeasible" in reason and "lp-cold: HiGHS Infeasible" in reason and "ipopt:" in reason
    assert a.heat_setpoint_c is not None and mpc.last_solution is None  # the home's thermostats
    plant = SimulatedHome(model, pd.DataFrame(fc.d, index=fc.index, columns=list(model.sym.d.names)), x)
    plant.reset()
    plant.step(a)  # a valid action for the plant
    # the next, feasible step is the LP's again, hot or cold
    fc2 = dataclasses.replace(fc, d=fc.d[4:], index=fc.index[4:], price_import=fc.price_import[4:],
                              price_export=fc.price_export[4:], low=fc.low[4:], high=fc.high[4:])
    assert mpc.act(observe(model, x, fc2), fc2).heat_w is not None and mpc.last_solution.solver == "highs"


@pytest.mark.slow
def test_time_limits_bound_every_link(small):
    """A deadline no solver can meet: the LP links stop at their time limit, IPOPT at its wall
    time; the step still ends in time with the rule-based action, every link logged."""
    model, fc, x = small
    mpc = EconomicMPC(model, 900.0, MpcConfig(deadline_s=1e-4))
    a = mpc.act(observe(model, x, fc), fc)
    assert a.heat_setpoint_c is not None
    assert [k for k, _ in _links(mpc)] == ["solver_retry", "solver_retry", "fallback"]
    reason = mpc.events[-1]["reason"]
    assert "lp-hot:" in reason and ("Time limit" in reason or "no time left" in reason)
    assert "ipopt: Maximum_WallTime_Exceeded" in reason
    assert mpc.solve_s[-1] < 5.0  # the time limits held (IPOPT's one-off build is not in solve_s)
    # IPOPT with time of its own rescues the step: the plant gets the optimiser's action
    cfg = MpcConfig(deadline_s=1e-4)
    cfg.ipopt["ipopt.max_wall_time"] = 60.0
    mpc = EconomicMPC(model, 900.0, cfg)
    a = mpc.act(observe(model, x, fc), fc)
    assert a.heat_w is not None and mpc.last_solution.solver == "ipopt"
    assert [k for k, _ in _links(mpc)] == ["solver_retry", "solver_retry"]


def test_a_nan_forecast_is_handed_to_rule_based_with_its_reason(small):
    model, fc, x = small
    d = fc.d.copy()
    d[5, model.sym.d.index("P_pv")] = np.nan
    mpc = EconomicMPC(model, 900.0, MpcConfig())
    a = mpc.act(observe(model, x, dataclasses.replace(fc, d=d)), dataclasses.replace(fc, d=d))
    assert a.heat_setpoint_c is not None
    assert mpc.events[-1]["kind"] == "fallback" and "P_pv" in mpc.events[-1]["reason"]


# ---------------------------------------------------------------------------------------------- limits

@pytest.mark.slow
def test_a_limit_changed_on_the_model_is_obeyed_by_plant_ocp_oracle_and_inverter(tmp_path):
    write_constant_inputs(tmp_path, str(START), 1.0, T_out=-5.0, ghi=0.0, P_load=800.0)
    from helpers import write_prices

    write_prices(tmp_path, str(START), 1.0, lambda h: 0.05 if h < 6 else 0.5, lambda h: 0.0)
    sc = load_scenario(write_scenario(tmp_path, ELECTRIC, start=str(START), days=1.0, prices="prices.csv"))
    prep = prepare(sc)
    new = dict(max_charge_w=800.0, max_discharge_w=900.0, soc_max=0.55, import_limit_w=3500.0)
    model = prep.model.with_limits(**new)
    assert model.limits.max_charge_w == 800.0 and prep.model.limits.max_charge_w == 2500.0
    prep_new = dataclasses.replace(prep, model=model)

    # the OCP's bounds
    v = decision_variables(model, Weights())
    assert v.ub[v.index("P_ch")] == pytest.approx(0.8) and v.ub[v.index("P_imp")] == pytest.approx(3.5)
    # the MPC (LP path) and the oracle, played through the plant: where the house file's limits
    # bind, the new ones hold
    for name in ("mpc", "oracle"):
        before = run(dataclasses.replace(prep, model=prep.model), name).trajectory
        after = run(prep_new, name).trajectory
        assert before["P_bat"].max() > 800.0 + 100 and after["P_bat"].max() <= 800.0 + 1e-6, name
        assert before["soc_end"].max() > 0.55 + 0.05 and after["soc_end"].max() <= 0.55 + 1e-9, name
        assert before["P_grid"].max() > 3500.0 + 100 and after["P_grid"].max() <= 3500.0 + 1e-6, name
        assert after["P_bat"].min() >= -900.0 - 1e-6, name
    # the plant clips a command beyond the new limits
    plant = SimulatedHome(model, prep.inputs, prep.x0)
    plant.reset()
    plant.step(Action(heat_w=np.zeros(2), bat_w=2500.0))
    assert plant.log.u_mean[0, model.sym.u.index("P_ch")] == pytest.approx(800.0)
    # the emulated inverter
    r = battery_ratings(model)
    assert (r.max_charge_w, r.max_discharge_w, r.soc_max) == (800.0, 900.0, 0.55)
    # the oracle's LP reads them too
    fp = forecast_provider(sc, prep)
    Z, _, _ = solve_plan(model, 900.0, Weights(), prep.x0, fp.perfect(0, 96))
    assert Z[:, v.index("P_ch")].max() <= 0.8 + 1e-6


def test_blocking_covers_the_horizon_with_fine_stages_first():
    b = Blocking.horizon(96, 24, 4)
    assert b.n_stages == 42 and b.n_steps == 96 and b.n_fine == 24 and b.steps[24:] == (4,) * 18
    assert Blocking.horizon(10, 4, 4).steps == (1, 1, 1, 1, 4, 2)
    assert Blocking.horizon(8, 24, 4).steps == (1,) * 8


def test_the_plan_of_a_blocked_horizon_has_a_row_per_step(small):
    """The live loop logs the plan by steps ahead: the blocked far horizon is expanded to one row per
    control step, inputs held over each stage, states at the stage boundaries as the LP has them."""
    model, fc, x = small
    mpc = EconomicMPC(model, 900.0, MpcConfig(use_true_state=True))
    a = mpc.act(observe(model, x, dataclasses.replace(fc, extras={"x_true": x})),
                dataclasses.replace(fc, extras={"x_true": x}))
    plan, sol = mpc.plan(), mpc.last_solution
    assert mpc.blocking.n_fine == 24 and mpc.blocking.n_stages < 96 <= len(plan) == mpc.blocking.n_steps
    assert (np.diff(plan.index) == pd.Timedelta(minutes=15)).all() and plan.index[0] == fc.index[0]
    np.testing.assert_allclose(plan[["P_heat__a", "P_heat__b"]].iloc[0], a.heat_w, atol=1e-6)
    starts = mpc.blocking.starts
    np.testing.assert_allclose(plan["T_mass__a"].to_numpy()[starts], sol.x[:-1, model.mass][:, 0], atol=1e-9)
    last = slice(starts[-2], starts[-1])  # a coarse stage: one input held over its steps
    assert np.ptp(plan["P_heat__a"].to_numpy()[last]) == 0.0
    # the coarse stages start on the clock's hours
    assert all(t.minute == 0 for t in plan.index[starts[mpc.blocking.n_fine + 1:]])


def test_a_battery_reserve_is_a_floor_the_plan_keeps(small):
    """A reserve (the live page's override, ``extras["soc_floor"]``) on prices that make emptying the
    battery worth it: without it the plan goes down to the battery's minimum; with it the plan never goes
    below the reserve, and from below the reserve it never discharges. Taken off, the next solve of
    the same (hot) LP empties the battery again."""
    model, fc, x = small
    pi = np.where(np.arange(len(fc)) < 48, 0.6, 0.05)  # dear for 12 h, cheap after: empty the battery first
    fc = dataclasses.replace(fc, price_import=pi, price_export=np.full(len(fc), 0.0))
    soc_min = model.limits.soc_min

    def plan(soc0: float, floor: float | None):
        x0 = x.copy()
        x0[model.i_soc] = soc0
        extras = {"x_true": x0} | ({} if floor is None else {"soc_floor": floor})
        f = dataclasses.replace(fc, extras=extras)
        a = mpc.act(observe(model, x0, f), f)
        assert mpc.last_solution is not None and mpc.last_solution.solver == "highs"
        return a, mpc.plan()

    mpc = EconomicMPC(model, 900.0, MpcConfig(use_true_state=True))
    _, free = plan(0.8, None)
    assert free["soc"].min() < soc_min + 0.01
    a, kept = plan(0.8, 0.5)
    assert kept["soc"].min() >= 0.5 - 1e-6 and a.bat_w < 0  # it still discharges, down to the reserve
    a, below = plan(0.3, 0.5)
    assert below["soc"].min() >= 0.3 - 1e-6 and a.bat_w >= -1e-6 and (below["P_bat"] >= -1e-3).all()
    _, again = plan(0.8, None)
    assert again["soc"].min() < soc_min + 0.01


@pytest.mark.parametrize("window_days, commit_days", [(2.0, 1.0), (3.0, 1.0)])
def test_a_sweeps_dry_run_times_the_oracle_on_one_whole_window_and_two(monkeypatch, window_days, commit_days):
    """A dry run reads a long oracle task off two slices of it; they must be one window of the
    oracle's LP and two (the day after each slice included), or the line through them is not a
    window's cost per committed day: the year's estimate was 30 % short on 3 and 7 days."""
    import pems.controllers.oracle as oracle
    from pems.scenarios.sweep import slice_days

    monkeypatch.setattr(oracle, "WINDOW_DAYS", window_days)
    monkeypatch.setattr(oracle, "COMMIT_DAYS", commit_days)
    model = build_model(house_from(ELECTRIC))
    rng = np.random.default_rng(5)
    x0 = random_state(model, rng)
    for days, windows in zip(slice_days("oracle"), (1, 2)):
        n = int(round(days * 96))
        fc = random_forecast(model, n + 96, rng)  # the run and the day after it, as a sweep's oracle sees them
        run_part = dataclasses.replace(oracle._rows(fc, 0, n), extras={"after": oracle._rows(fc, n, n + 96)})
        _, _, stats = solve_plan(model, 900.0, Weights(), x0, run_part, window_days=oracle.WINDOW_DAYS,
                                 commit_days=oracle.COMMIT_DAYS)
        assert stats["windows"] == windows and stats["success"], (days, stats)
