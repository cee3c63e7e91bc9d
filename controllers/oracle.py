"""The perfect-foresight oracle: the best any controller could do with the same model and objective.

The oracle knows the true initial state (slab temperatures included) and the true future of the
whole run, and solves the economic OCP of :mod:`pems.controllers.ocp` once over all of it — the same
discrete model, stage cost, constraints and terminal value as the MPC, with the horizon stretched to
the run and the day after it. A run's end is not the world's end: an oracle free to empty the slabs
and the battery in the last hours would "win" short runs by what it leaves undone (on the 4-day
cold snap that alone is worth 4 %), so it plans on, as every controller that plans does. The problem is linear for electric heating and for a heat pump whose COP follows the
(known) outdoor temperature, so it is solved as one large sparse LP with HiGHS' interior-point
method. The plan is then played back through the plant.

Its cost is the lower bound every benchmark reports distances to: a controller within a few percent
of it leaves little on the table, whatever its forecasts.
"""

from __future__ import annotations

import time

import casadi as ca
import numpy as np

from pems.controllers.ocp import (StageParameters, Weights, decision_variables, discretise, stage,
                                  terminal_prices, terminal_value)
from pems.twin.model import HouseModel
from pems.twin.signals import Action, Forecast, Observation

HIGHS_OPTIONS = {"highs": {"solver": "ipm", "run_crossover": "off", "output_flag": False},
                 "error_on_fail": False}


class OracleFailed(RuntimeError):
    """The LP of the whole run could not be solved."""


def solve_plan(model: HouseModel, step_s: float, weights: Weights, x0: np.ndarray,
               fc: Forecast) -> tuple[np.ndarray, float, dict]:
    """Solve the OCP over the whole of ``fc`` from ``x0``.

    Returns
    -------
    Z
        Decision variables per step (N, n_z) (kW and K, :func:`decision_variables` order).
    objective
        Optimal objective [currency] over the run and the day after it (cost + comfort penalty − value
        of the energy left at the end).
    stats
        Solver statistics (status, wall time).
    """
    dm = discretise(model, step_s)
    v = decision_variables(model, weights)
    nx, nz, nd, nr = len(model.sym.x), len(v.names), len(model.sym.d), model.n_rooms
    n_run = len(fc)
    after = fc.extras.get("after")
    if after is not None:  # plan on through the day after the run, as a controller would
        fc = Forecast(index=fc.index.append(after.index), d=np.vstack([fc.d, after.d]), d_names=fc.d_names,
                      price_import=np.r_[fc.price_import, after.price_import],
                      price_export=np.r_[fc.price_export, after.price_export],
                      low=np.vstack([fc.low, after.low]), high=np.vstack([fc.high, after.high]), rooms=fc.rooms)
    N = len(fc)
    # One stage, written once, mapped over the run.
    xs, xn, zs, ds = ca.SX.sym("x", nx), ca.SX.sym("xn", nx), ca.SX.sym("z", nz), ca.SX.sym("d", nd)
    pi, pe = ca.SX.sym("pi"), ca.SX.sym("pe")
    lo, hi = ca.SX.sym("lo", nr), ca.SX.sym("hi", nr)
    cost, g, resid = stage(dm, weights, v, xs, zs, StageParameters(ds, pi, pe, lo, hi), x_next=xn)
    S = ca.Function("stage", [xs, xn, zs, ds, pi, pe, lo, hi], [cost, g, resid]).map(N)

    opti = ca.Opti("conic")
    X = opti.variable(nx, N + 1)
    Z = opti.variable(nz, N)
    c_all, g_all, r_all = S(X[:, :N], X[:, 1:], Z, ca.DM(fc.d.T), ca.DM(fc.price_import).T,
                            ca.DM(fc.price_export).T, ca.DM(fc.low.T), ca.DM(fc.high.T))
    opti.subject_to(X[:, 0] == ca.DM(x0))
    opti.subject_to(ca.vec(r_all) == 0)
    opti.subject_to(ca.vec(g_all) <= 0)
    lb, ub = np.tile(v.lb[:, None], (1, N)), np.tile(np.where(np.isfinite(v.ub), v.ub, 1e6)[:, None], (1, N))
    opti.subject_to(opti.bounded(ca.DM(lb), Z, ca.DM(ub)))
    if model.has_battery:
        b = model.house.battery
        opti.subject_to(opti.bounded(b.soc_min, X[model.i_soc, 1:], b.soc_max))
    # The MPC's objective, terminal value included, over the run and the day after it: the run's end
    # is not the world's end, so the oracle leaves the house as ready for tomorrow as a controller
    # that plans on would, instead of emptying slabs and battery in the run's last hours.
    day = min(N, int(round(86400 / step_s)))
    p_el, p_heat = terminal_prices(dm, fc.price_import[-day:], fc.d[-day:])
    J = ca.sum2(c_all) - terminal_value(dm, X[:, N], p_el, p_heat, weights)
    opti.minimize(J)
    opti.solver("highs", HIGHS_OPTIONS)
    t0 = time.perf_counter()
    try:
        sol = opti.solve()
    except RuntimeError as exc:
        raise OracleFailed(str(exc)) from None
    stats = dict(opti.stats())
    stats["wall_s"] = time.perf_counter() - t0
    if not stats.get("success", False):
        raise OracleFailed(f"HiGHS: {stats.get('return_status')}")
    plan = np.asarray(sol.value(Z)).reshape(nz, N).T[:n_run]
    stats["run_cost"] = float(np.sum(np.asarray(sol.value(c_all)).ravel()[:n_run]))
    return plan, float(sol.value(J)), stats


class PerfectForesightOracle:
    """The ``oracle`` controller: solves once with the true future, then plays its plan back.

    The runner gives it (``full_horizon``) a perfect forecast of the whole remaining run and the
    plant's true state in ``forecast.extras["x_true"]``.
    """

    name = "oracle"
    full_horizon = True

    def __init__(self, model: HouseModel, step_s: float = 900.0, weights: Weights | None = None) -> None:
        self.model = model
        self.step_s = float(step_s)
        self.weights = weights or Weights()
        self.v = decision_variables(model, self.weights)
        self.reset()

    def reset(self) -> None:
        self.plan: np.ndarray | None = None
        self.k = 0
        self.events: list[dict] = []
        self.objective = float("nan")
        self.stats: dict = {}

    def act(self, observation: Observation, forecast: Forecast) -> Action:
        if self.plan is None:
            x0 = forecast.extras.get("x_true")
            if x0 is None:
                raise OracleFailed("the oracle needs the plant's true state (forecast.extras['x_true'])")
            self.plan, self.objective, self.stats = solve_plan(self.model, self.step_s, self.weights,
                                                               np.asarray(x0), forecast)
        z = self.plan[min(self.k, len(self.plan) - 1)]
        self.k += 1
        m = self.model
        u_w = z[: self.v.n_model_u] * 1000.0
        heat = np.clip(u_w[m.heat], 0.0, m.heater_w)
        bat = None
        if m.has_battery:
            bat = float(u_w[m.sym.u.index("P_ch")] - u_w[m.sym.u.index("P_dis")])
        return Action(heat_w=heat, bat_w=bat)
